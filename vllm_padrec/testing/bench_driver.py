"""What the vLLM benchmarks that run one engine per process share: a configuration's child process,
rebuilding a results file's Markdown and plot, and ``--merge`` (a results file that keeps earlier runs' records).

A benchmark's parent runs each configuration as ``python -m <module> <argv> --result <work>/<tag>_<config>.json``
with its own ``VLLM_CACHE_ROOT`` (``<cache root>/<config>``: engines of other configurations must not share
a compile cache; they share vLLM's model-class inspections, ``share_model_info``), its output in
``<work>/<tag>_<config>.log``; the child writes its result as JSON there.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vllm_padrec.testing.results import write_results

TIMED_OUT = 124  # coreutils timeout's exit status when it stopped the command
KILL_GRACE_S = 30  # after its SIGTERM, timeout's SIGKILL


def run_configuration(
    module: str,  # the benchmark, run as ``python -m module``
    tag: str,  # the file names' prefix and the progress line's tag
    config: str,  # the configuration's name
    argv: list[str],  # the child's arguments (the parent's, plus what selects the configuration)
    work_dir: str | Path,
    cache_root: str | Path,
    env: dict[str, str] | None = None,  # more environment for the child
    timeout_s: float | None = None,  # stop the child, and the engine processes it started, after this long
) -> tuple[Any, str | None]:
    """Run one configuration's child: (its result or None when it wrote none, None when it exited 0 or else its
    exit status and the log's tail). A child that wrote its result and then exited abnormally (an engine aborting
    at teardown, after the measurements) gives both: its result counts, the exit is reported. With ``timeout_s``
    the child runs under coreutils' ``timeout``, which signals the child's whole process group (its engine cores
    too: a hung engine would otherwise hold the GPU for the configurations after it), exit 124."""
    result = Path(work_dir) / f"{tag}_{config}.json"
    result.unlink(missing_ok=True)
    log = result.with_suffix(".log")
    share_model_info(cache_root, config)
    child_env = {**os.environ, "VLLM_CACHE_ROOT": str(Path(cache_root) / config), **(env or {})}
    print(f"[{tag}] {config} (log {log}) ...", flush=True)
    with open(log, "w") as handle:
        limit = ["timeout", "--kill-after", str(KILL_GRACE_S), f"{timeout_s:g}"] if timeout_s else []
        command = [*limit, sys.executable, "-m", module, *argv, "--result", str(result)]
        code = subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT, env=child_env)
    written = json.loads(result.read_text()) if result.exists() else None
    if code == 0 and written is not None:
        return written, None
    what = "after writing its result" if written is not None else "without a result"
    if timeout_s and code == TIMED_OUT:
        what += f", stopped after {timeout_s:g} s"
    error = f"exit {code} {what}: " + log.read_text()[-1500:]
    print(error, flush=True)
    return written, error


# vLLM caches what it learns of a model class (its interfaces, read in a subprocess that imports vLLM on a miss) in
# VLLM_CACHE_ROOT/modelinfos, keyed by the hash of the class's source file (model_executor/models/registry.py,
# _LazyRegisteredModel). With a cache root per configuration every engine missed: on the H200 (2026-12-02) each
# start-up spent 23-26 s before "Resolved architecture" per model class, twice for an engine with a draft; the
# next hold's logs show how much of it sharing the folder saves
MODEL_INFO_DIR = "modelinfos"


def share_model_info(cache_root: str | Path, config: str) -> None:
    """Point ``config``'s VLLM_CACHE_ROOT/modelinfos at one folder that every configuration under ``cache_root``
    shares, so that only the first engine of a run inspects each model class. The compile caches stay apart (an
    engine of one draft once loaded another's compiled graph and crashed); these entries are not compiled code
    and are checked against their source's hash. A folder already there (an earlier run's) is kept as it is."""
    shared = Path(cache_root) / MODEL_INFO_DIR
    shared.mkdir(parents=True, exist_ok=True)
    link = Path(cache_root) / config / MODEL_INFO_DIR
    if not link.exists() and not link.is_symlink():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(shared.resolve(), target_is_directory=True)


def command_line(module: str, argv: list[str]) -> str:
    """The command that runs ``module`` with ``argv``, as a payload records it (``benchmarks/results_page.py``)."""
    return shlex.join(["python3", "-m", module, *argv])


def write_payload(out: str | Path, name: str, payload: dict, markdown: Callable, plot: Callable) -> None:
    """``<name>.json``, ``.md`` and ``.png`` of a results payload in ``out``."""
    write_results(out, name, payload, markdown(payload), lambda plt: plot(plt, payload))


def write_progress(
    out: str | Path, name: str, payload: dict, done: int, final: bool, markdown: Callable, plot: Callable
) -> dict:
    """``write_payload`` after each configuration of a run (so that a run cut short keeps what it measured),
    the payload saying it is partial until the ``final`` one; returns the payload."""
    if not final:
        payload["note"] = f"partial: {done} configurations done, the run goes on"
    write_payload(out, name, payload, markdown, plot)
    return payload


def rerender(
    json_path: str | Path,
    note: str | None,
    markdown: Callable[[dict], str],
    plot: Callable,  # (pyplot, payload) -> figure or None
    refresh: Callable[[dict], None] | None = None,  # updates derived fields of the payload first
) -> None:
    """Rewrite a results JSON's Markdown and plot (and the JSON, with ``note`` attached when given)."""
    path = Path(json_path)
    payload = json.loads(path.read_text())
    if note:
        payload["note"] = note
    if refresh is not None:
        refresh(payload)
    write_payload(path.parent, path.stem, payload, markdown, plot)


def add_run_options(parser: argparse.ArgumentParser, tag: str, stem: str, config_name: str) -> None:
    """The options every such benchmark has: where its configurations run and its results go, ``--render``
    and the child's hidden ``--result``. ``config_name`` says how a configuration is named (in the help)."""
    add = parser.add_argument
    add("--cache-root", default=f"/tmp/{tag}_cache", help=f"VLLM_CACHE_ROOT/{config_name} per configuration")
    add("--work-dir", default="/tmp", help=f"each configuration's result and log ({tag}_{config_name}.*)")
    add("--out", default="benchmarks/results", help="folder of the results (default benchmarks/results)")
    add("--name", default=None, help=f"stem of the results (default {stem}_<dataset folder name>)")
    add("--render", default=None, metavar="JSON", help="only rebuild the Markdown and PNG of a results JSON")
    add("--note", default=None, help="with --render: a note written into the JSON and the Markdown")
    add(
        "--merge",
        action="store_true",
        help="keep the records of the results file of the same name that this run does not measure again, each "
        "marked with its run's date (measured_on), so that one file holds several runs; each goal reads one run's "
        "records",
    )
    add("--result", default=None, help=argparse.SUPPRESS)  # child: where it writes its result


def cell(value: Any) -> str:
    """A table cell: ``-`` for a value not measured."""
    return "-" if value is None else str(value)


def failures_markdown(errors: dict[str, str]) -> list[str]:
    """One line per configuration that failed or exited abnormally, with the tail of its error."""
    return [f"Configuration {name}: `{error[-300:]}`" for name, error in errors.items()]


# -- --merge: one results file that keeps several runs' records ------------------------------------------------
def earlier_records(path: Path) -> list[dict]:
    """``--merge``: the records of an earlier results file (none when there is no file), each with the date of
    the run that measured it (``measured_on``)."""
    if not path.exists():
        return []
    earlier = json.loads(path.read_text())
    return [{**r, "measured_on": r.get("measured_on", earlier.get("date"))} for r in earlier.get("records", [])]


def merged(earlier: list[dict], records: list[dict], key: Callable[[dict], tuple]) -> list[dict]:
    """The earlier runs' records this run did not measure again (same ``key``), then this run's."""
    measured = {key(r) for r in records}
    return [r for r in earlier if key(r) not in measured] + records


def earlier_mark(record: dict) -> str:
    """`` (run of 2026-12-01)`` after the label of a record an earlier run measured (``--merge``)."""
    return f" (run of {record['measured_on'][:10]})" if record.get("measured_on") else ""


def earlier_runs_markdown(records: list[dict]) -> list[str]:
    """A line naming the records an earlier run measured (``--merge``), by run date; none without them."""
    dates: dict[str, int] = {}
    for r in records:
        if r.get("measured_on"):
            dates[r["measured_on"]] = dates.get(r["measured_on"], 0) + 1
    if not dates:
        return []
    runs = "; ".join(f"{n} measured on {date}" for date, n in sorted(dates.items()))
    return [f"Records from earlier runs, kept beside this run's (`--merge`): {runs}.", ""]


# -- --engine-args: more vllm.LLM arguments ------------------------------------------------------------------
def json_object(text: str) -> dict:
    """``--engine-args``: a JSON object, or argparse's one-line error."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"a JSON object of vllm.LLM arguments, got {text!r}")
    return value


def tensor_parallel_size(settings: dict) -> int:
    """The GPUs one engine spans under ``settings``, a run's engine arguments or one of its records (vLLM's
    ``tensor_parallel_size``; 1 when not given: records from before the field ran on one GPU)."""
    return int(settings.get("tensor_parallel_size", 1))
