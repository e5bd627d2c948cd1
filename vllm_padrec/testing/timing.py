"""GPU timing of one callable: eagerly, or replayed from a CUDA graph (benchmarks only; needs CUDA); and the
engine steps an offline ``vllm.LLM`` runs."""

from __future__ import annotations

import statistics


def time_ms(fn, iters: int, repeats: int, graph: bool) -> float:
    """Median over ``repeats`` of the mean time per call (ms), eagerly or as CUDA-graph replays."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up (also what graph capture requires)
        for _ in range(5):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    run = fn
    if graph:
        cuda_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(cuda_graph):
            fn()
        run = cuda_graph.replay
        for _ in range(5):
            run()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / iters)
    return statistics.median(times)


class EngineSteps:
    """Counts the engine steps of one ``vllm.LLM``: its requests run through ``llm.llm_engine.step``, one call
    per engine step, which this wraps."""

    def __init__(self, llm) -> None:
        self.count = 0
        step = llm.llm_engine.step

        def counted(*args, **kwargs):
            self.count += 1
            return step(*args, **kwargs)

        llm.llm_engine.step = counted
