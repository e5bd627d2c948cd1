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
    per engine step, which this wraps (``count``). With the engine core in this process
    (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) it also counts the model runner's ``sample_tokens`` calls
    (``forwards``): the steps that ran the model and sampled. With async scheduling a request's last output
    arrives one engine step after its last forward, in a step that runs no model."""

    def __init__(self, llm) -> None:
        self.count = 0
        self.forwards: int | None = None
        step = llm.llm_engine.step

        def counted(*args, **kwargs):
            self.count += 1
            return step(*args, **kwargs)

        llm.llm_engine.step = counted
        runner = in_process_model_runner(llm)
        if runner is not None:
            self.forwards = 0
            sample_tokens = runner.sample_tokens

            def counted_forward(*args, **kwargs):
                self.forwards += 1
                return sample_tokens(*args, **kwargs)

            runner.sample_tokens = counted_forward


def in_process_engine_core(llm):
    """``llm``'s engine core when it runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``); else None."""
    return getattr(llm.llm_engine.engine_core, "engine_core", None)


def in_process_model_runner(llm):
    """The model runner of ``llm``'s engine core when it runs in this process; else None."""
    executor = getattr(in_process_engine_core(llm), "model_executor", None)
    worker = getattr(getattr(executor, "driver_worker", None), "worker", None)
    return getattr(worker, "model_runner", None)
