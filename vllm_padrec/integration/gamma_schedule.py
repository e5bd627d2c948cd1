"""Draft steps by batch size from measured throughput: the table vLLM's dynamic speculative decoding reads.

A speculative step pays for its drafts and for verifying them; at a small batch the accepted tokens win,
at a large one the step's extra cost can lose to plain decoding (issue 14: PAD-Rec at batch 64 ran 0.76x
no speculation). The policy: for each batch size measured, the gamma with the largest speedup over no
speculation, 0 (no drafting) when none beats it by ``min_gain``. A record's speedup is its ``paired_speedup``
where the benchmark alternated its calls with a baseline engine's (robust to the machine's drift), else its
tokens/s over the baseline record's at its batch size. Between measured batch sizes a
size takes the choice of the largest measured size below it (the first range starts at 1); above the last,
the last's.

The table is ``--speculative-config``'s ``num_speculative_tokens_per_batch_size``: ``[[first, last, K],
...]``, inclusive ranges. vLLM's scheduler then asks each step for K drafts by its batch size, and
``speculator.PadRecSpeculator`` drafts exactly K (nothing at K = 0), so that a step without speculation
costs what plain decoding costs. A choice of one K at every batch size is served as that K without the table
(``speculative_config``).

The measurements are benchmark records (``bench_spec_decode``'s schema): ``method``, ``batch_size``,
``gamma`` and ``tokens_per_s``, and ``paired_speedup`` where measured; a record of ``baseline`` (default
``none``) is no speculation at its batch size, whatever its gamma. A results file holds several measurements
of a batch size (lists of 10 and 20 items, offline and served); ``one_measurement`` keeps one list length and
one mode, so that every choice compares records measured alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

Range = tuple[int, int, int]  # (first batch size, last batch size, draft steps), inclusive
OFFLINE, SERVE = "offline", "serve"  # a record's ``mode``: an in-process LLM, or vllm serve
MODES = (OFFLINE, SERVE)


def one_measurement(records: list[Mapping], list_len: int | None = None, mode: str = OFFLINE) -> list[Mapping]:
    """The records of one list length (``list_len``; None: the smallest the records name) and one ``mode``;
    records without the field (measured one way only) are kept."""
    lengths = [r["list_len"] for r in records if isinstance(r, Mapping) and r.get("list_len") is not None]
    if list_len is None and lengths:
        list_len = min(lengths)
    elif list_len is not None and list_len not in lengths:
        raise ValueError(f"no record has list_len {list_len} (the records have {sorted(set(lengths)) or 'none'})")

    def kept(r) -> bool:
        if not isinstance(r, Mapping):
            return True  # best_gammas names it
        return r.get("list_len", list_len) == list_len and r.get("mode", mode) == mode

    return [r for r in records if kept(r)]


@dataclass(frozen=True)
class Speedup:
    """A gamma's speedup over no speculation at one batch size, and whether it was measured paired."""

    ratio: float
    paired: bool


def speedups(records: Iterable[Mapping], method: str, baseline: str = "none") -> dict[int, dict[int, Speedup]]:
    """Per measured batch size, each gamma of ``method``'s speedup over ``baseline``: a record's
    ``paired_speedup`` where it has one (preferred over an unpaired record of the same gamma), else its tokens/s
    over ``baseline``'s record at its batch size; an unpaired record at a batch size without a baseline record is
    an error (the comparison would not be side by side)."""
    plain: dict[int, float] = {}
    unpaired: dict[int, dict[int, float]] = {}  # batch size -> gamma -> tokens/s
    paired: dict[int, dict[int, float]] = {}  # batch size -> gamma -> paired speedup
    for i, r in enumerate(records):
        if not isinstance(r, Mapping):
            raise ValueError(f"record {i} is not an object: {r!r}")
        missing = [field for field in ("method", "batch_size", "tokens_per_s") if field not in r]
        if missing:
            raise ValueError(f"record {i} has no {missing[0]!r}")
        if r["tokens_per_s"] is None:
            continue
        if r["method"] == baseline:
            plain[r["batch_size"]] = max(plain.get(r["batch_size"], 0.0), r["tokens_per_s"])
        elif r["method"] == method and r.get("gamma"):
            kind = paired if r.get("paired_speedup") is not None else unpaired
            value = r["paired_speedup"] if kind is paired else r["tokens_per_s"]
            by_gamma = kind.setdefault(r["batch_size"], {})
            by_gamma[r["gamma"]] = max(by_gamma.get(r["gamma"], 0.0), value)
    if not unpaired and not paired:
        raise ValueError(f"no record of method {method!r} with a gamma and tokens_per_s")
    unmatched = sorted(set(unpaired) - set(plain))
    if unmatched:
        raise ValueError(f"batch sizes {unmatched} have {method!r} records but no {baseline!r} record to compare with")
    result: dict[int, dict[int, Speedup]] = {}
    for batch, by_gamma in unpaired.items():
        result[batch] = {gamma: Speedup(rate / plain[batch], False) for gamma, rate in by_gamma.items()}
    for batch, by_gamma in paired.items():
        result.setdefault(batch, {}).update({gamma: Speedup(ratio, True) for gamma, ratio in by_gamma.items()})
    return dict(sorted(result.items()))


def fastest(by_gamma: Mapping[int, Speedup]) -> tuple[int, Speedup]:
    """The gamma with the largest speedup (a tie: the smaller gamma) and its speedup."""
    return max(by_gamma.items(), key=lambda item: (item[1].ratio, -item[0]))


def best_gammas(
    records: Iterable[Mapping], method: str, baseline: str = "none", min_gain: float = 0.0
) -> dict[int, int]:
    """Per measured batch size, the gamma of ``method`` with the largest speedup over ``baseline``
    (``speedups``), or 0 when none beats it by ``min_gain`` (a fraction: 0.02 wants 2% more)."""
    return chosen_gammas(speedups(records, method, baseline), min_gain)


def chosen_gammas(by_batch: Mapping[int, Mapping[int, Speedup]], min_gain: float = 0.0) -> dict[int, int]:
    """``best_gammas`` from speedups already measured (``speedups``'s result)."""
    choice = {}
    for batch, by_gamma in by_batch.items():
        gamma, best = fastest(by_gamma)
        choice[batch] = gamma if best.ratio > 1.0 + min_gain else 0
    return choice


def gamma_table(choice: Mapping[int, int], max_batch_size: int) -> list[Range]:
    """The per-batch-size choice as inclusive ranges covering 1..``max_batch_size`` (module docstring),
    neighbouring ranges of the same K merged."""
    sizes = sorted(b for b in choice if b <= max_batch_size)
    if not sizes:
        raise ValueError(f"no measured batch size is at most max_batch_size={max_batch_size}")
    ranges: list[Range] = []
    for i, batch in enumerate(sizes):
        first = 1 if i == 0 else batch
        last = sizes[i + 1] - 1 if i + 1 < len(sizes) else max_batch_size
        if ranges and ranges[-1][2] == choice[batch]:
            ranges[-1] = (ranges[-1][0], last, choice[batch])
        else:
            ranges.append((first, last, choice[batch]))
    return ranges


def drafts_anywhere(table: Iterable[Range]) -> bool:
    """Whether the table drafts at some batch size; one that never does is served without a draft."""
    return any(k > 0 for _, _, k in table)


def speculative_config(draft: str, table: list[Range], method: str = "eagle") -> dict:
    """``--speculative-config`` for a draft under the table: ``num_speculative_tokens`` is its largest K, and the
    table goes with it only where K changes with the batch size: a table of one K is that K without a table (the
    same rounds; a profile of one request's rounds with and without a table found no phase that costs more under
    it, ``benchmarks/results/engine_step_batch1.md``). ValueError when the table drafts at no batch size."""
    if not drafts_anywhere(table):
        raise ValueError("no gamma beats no speculation at any measured batch size: serve without a draft")
    config = {"method": method, "model": draft, "num_speculative_tokens": max(k for _, _, k in table)}
    if len({k for _, _, k in table}) > 1:
        config["num_speculative_tokens_per_batch_size"] = [list(r) for r in table]
    return config
