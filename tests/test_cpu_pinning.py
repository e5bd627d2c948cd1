"""testing/cpu_pinning.py: CPU lists, physical cores from sysfs, sets of whole cores, and pinning threads."""

from __future__ import annotations

import os
import threading

import pytest

from vllm_padrec.testing import cpu_pinning


def fake_sysfs(root, siblings: dict[int, str]):
    for cpu, text in siblings.items():
        folder = root / f"cpu{cpu}" / "topology"
        folder.mkdir(parents=True)
        (folder / "thread_siblings_list").write_text(text + "\n")
    return root


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("0-3,8,10-11", [0, 1, 2, 3, 8, 10, 11]), ("5", [5]), ("0,0-1\n", [0, 1]), ("", [])],
)
def test_cpu_lists_read_and_write_the_kernels_syntax(text, cpus):
    assert cpu_pinning.parse_cpu_list(text) == cpus
    if cpus:
        assert cpu_pinning.parse_cpu_list(cpu_pinning.cpu_list(cpus)) == cpus
    assert cpu_pinning.cpu_list([11, 0, 1, 2, 3, 8, 10]) == "0-3,8,10-11"


def test_smt_siblings_stay_together_and_the_sets_are_whole_cores(tmp_path):
    """Siblings numbered N apart (0 and 4, 1 and 5, ...), as many VMs number them: a set of CPUs 0-2 would share
    cores with a set of CPUs 3-5; sets of whole cores share none."""
    sysfs = fake_sysfs(tmp_path, {i: f"{i % 4},{i % 4 + 4}" for i in range(8)})
    assert cpu_pinning.physical_cores(range(8), sysfs) == [[0, 4], [1, 5], [2, 6], [3, 7]]
    sets = cpu_pinning.split_cores(range(8), 3, sysfs)
    assert sets == [[0, 1, 4, 5], [2, 6], [3, 7]]  # 4 cores in 3 sets: the first takes the extra one
    assert cpu_pinning.physical_cores([0, 1, 2], sysfs) == [[0], [1], [2]]  # siblings outside the allowed CPUs
    with pytest.raises(ValueError, match="4 physical cores \\(0-7\\) cannot give 5 sets a core each"):
        cpu_pinning.split_cores(range(8), 5, sysfs)


def test_a_cpu_without_topology_is_a_core_of_its_own(tmp_path):
    sysfs = fake_sysfs(tmp_path, {0: "0-1", 1: "0-1"})
    assert cpu_pinning.physical_cores([0, 1, 2, 3], sysfs) == [[0, 1], [2], [3]]
    assert cpu_pinning.split_cores([0, 1, 2, 3], 2, sysfs) == [[0, 1, 2], [3]]


def test_pinning_moves_every_thread_of_the_process_and_a_new_thread_inherits_the_callers_set():
    """On this machine's own CPUs: pin_thread sets the caller's (which a thread it starts inherits), pin_process
    every thread's; the test restores the CPUs it found."""
    found = os.sched_getaffinity(0)
    one = {min(found)}
    seen, started, release = {}, threading.Event(), threading.Event()

    def worker(name):
        seen[name] = os.sched_getaffinity(0)
        started.set()
        release.wait(10)
        seen[f"{name} after"] = os.sched_getaffinity(0)

    try:
        earlier = threading.Thread(target=worker, args=("earlier",))
        earlier.start()
        started.wait(10)
        cpu_pinning.pin_thread(one)
        assert os.sched_getaffinity(0) == one
        later = threading.Thread(target=lambda: seen.update(later=os.sched_getaffinity(0)))
        later.start()
        later.join()
        assert seen["later"] == one and seen["earlier"] == found  # started before the pin: its own set
        cpu_pinning.pin_process(one)
        release.set()
        earlier.join()
        assert seen["earlier after"] == one
    finally:
        release.set()
        cpu_pinning.pin_process(found)
    assert os.sched_getaffinity(0) == found
