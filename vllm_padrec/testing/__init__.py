"""Shared by the tests and the benchmarks (not imported by the plugin).

server.py       a `vllm serve` subprocess: start, wait until healthy, send requests, stop
metrics.py      its Prometheus metrics (``GET /metrics``) parsed by prometheus_client; a gauge poller
compare.py      where two greedy answers first differ, and the top-2 log-probability gap there
hostile.py      requests a hostile client sends, with the 4xx each must get
drafts.py       a draft checkpoint folder: where its config is, its method, its draft steps
stats.py        percentiles of measurements (numpy)
results.py      a benchmark's results: <stem>.json, <stem>.md and <stem>.png in its out folder
mask_inputs.py  engine-step inputs for the list masks and their Triton kernel
topk_goals.py   issue 12's goals for top-K in the engine, read from bench_topk's records
bench_driver.py a benchmark's configuration run as a child process, and a results file re-rendered
cpu_pinning.py  physical cores of their own for a benchmark's engines (bench_spec_decode --pin-cpus)
gpu_clocks.py   the GPU's clocks, power and temperature through a benchmark's passes (one nvidia-smi stream)
"""
