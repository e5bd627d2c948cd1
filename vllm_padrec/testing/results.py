"""A benchmark's results in its out folder: ``<stem>.json``, ``<stem>.md`` and ``<stem>.png``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from vllm_padrec.plotting import pyplot

PLOT_DPI = 120


def target_quality_stem(dataset: str) -> str:
    """The stem of a bench target's own test metrics (the ``bench_eval`` job's): ``target_`` and the dataset
    folder's first word (``beauty_atspeed``: ``target_beauty``)."""
    return f"target_{dataset.split('_')[0]}"


def write_results(
    out: str | Path,
    stem: str,
    record: dict | None = None,
    markdown: str | None = None,
    figure: Callable | None = None,
) -> dict[str, Path]:
    """Write what is given into ``out`` (created when missing): ``record`` as ``<stem>.json`` (indented
    JSON), ``markdown`` as ``<stem>.md``, and ``figure(pyplot)`` (a callable that draws and returns a
    matplotlib figure, or None for nothing to draw) as ``<stem>.png``. The PNG is skipped where matplotlib
    is not installed. Returns the paths written, by suffix ("json", "md", "png")."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if record is not None:
        written["json"] = folder / f"{stem}.json"
        written["json"].write_text(json.dumps(record, indent=2))
    if markdown is not None:
        written["md"] = folder / f"{stem}.md"
        written["md"].write_text(markdown)
    if figure is not None:
        plt = pyplot()
        if plt is None:
            print(f"matplotlib is not importable: {stem}.png not written", flush=True)
            return written
        fig = figure(plt)
        if fig is not None:
            written["png"] = folder / f"{stem}.png"
            fig.savefig(written["png"], dpi=PLOT_DPI)
            plt.close(fig)
    return written
