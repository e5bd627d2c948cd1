"""CPU sets of their own for a benchmark's engines (``bench_spec_decode --pin-cpus``).

At batch 1 a vLLM engine step is host work (``benchmarks/results/engine_step_batch1.md``: the GPU busy 39 % of
a round), and engines of one configuration started in one run ran 25 % apart (2026-12-03). One candidate cause is
where the operating system places the engine-core processes: beside the other engine's, or on the sibling thread
of a core another process keeps busy. Pinning each engine core, and the benchmark's own threads, to physical cores
of their own takes that cause away. On the H200 it did not narrow the spread: pinned, two baseline engines of one
run still ran 36 % apart (2026-12-03 19:45; ``integration/SPEC_DECODE.md`` section 12).

A process started by a thread inherits that thread's CPU set (``sched_setaffinity(2)``), and vLLM starts an
engine's core process from the thread that builds ``vllm.LLM``: so the benchmark pins itself to the engine's set,
builds the engine, and then moves every one of its own threads to its own set (``pin_process``).
"""

from __future__ import annotations

import os
from pathlib import Path

SYSFS_CPU = Path("/sys/devices/system/cpu")


def parse_cpu_list(text: str) -> list[int]:
    """``0-3,8,10-11`` (the kernel's CPU-list syntax) as sorted CPU numbers."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return sorted(cpus)


def cpu_list(cpus) -> str:
    """Sorted CPU numbers in the kernel's CPU-list syntax: ``[0, 1, 2, 5]`` -> ``0-2,5``."""
    ordered, runs = sorted(cpus), []
    for cpu in ordered:
        if runs and cpu == runs[-1][1] + 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def physical_cores(cpus, sysfs: Path = SYSFS_CPU) -> list[list[int]]:
    """``cpus`` grouped by physical core (their SMT siblings among ``cpus``, from sysfs' ``thread_siblings_list``),
    in order of each core's first CPU; a CPU whose siblings sysfs does not say is a core of its own."""
    allowed, cores, seen = set(cpus), [], set()
    for cpu in sorted(allowed):
        if cpu in seen:
            continue
        try:
            siblings = parse_cpu_list((sysfs / f"cpu{cpu}" / "topology" / "thread_siblings_list").read_text())
        except (OSError, ValueError):
            siblings = [cpu]
        core = sorted((set(siblings) & allowed) | {cpu})
        seen.update(core)
        cores.append(core)
    return cores


def split_cores(cpus, parts: int, sysfs: Path = SYSFS_CPU) -> list[list[int]]:
    """``cpus`` in ``parts`` sets of whole physical cores, as even as the cores allow (earlier sets take one more
    core when they do not divide); ValueError when there are fewer cores than sets."""
    cores = physical_cores(cpus, sysfs)
    if len(cores) < parts:
        raise ValueError(f"{len(cores)} physical cores ({cpu_list(cpus)}) cannot give {parts} sets a core each")
    base, extra = divmod(len(cores), parts)
    sets, start = [], 0
    for i in range(parts):
        size = base + (i < extra)
        sets.append(sorted(cpu for core in cores[start : start + size] for cpu in core))
        start += size
    return sets


def pin_thread(cpus) -> None:
    """The calling thread (and the processes and threads it starts from now on) on ``cpus``."""
    os.sched_setaffinity(0, cpus)


def pin_process(cpus) -> None:
    """Every thread of this process on ``cpus`` (a thread's set is its own: each is moved)."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:  # a thread that ended meanwhile
            continue
