"""How much of a recommendation list the catalog alone decides: issue 14's catalog lever, weighed on the CPU.

Where the list constraint allows exactly one next token (a deep code of an item whose prefix has one child,
the separator after a complete item, ``</s>`` after the last), that token is *forced*: a masked draft and the
masked greedy target both pick it, so it needs no draft forward to be proposed, and forced tokens after a
round's last draft would be accepted by the same target forward at no drafting cost. This benchmark measures
how often that happens on each dataset, with the plugin's own rule (``ListConstraint``: the trie, no repeats,
the history banned), over lists of ``--list-items`` items per test user:

- the items are drawn without replacement, weighted by each item's count among the training interactions
  (what recommenders tend to output), the user's history excluded; the target model plays no part, so the
  shares are the catalog's, not a model's;
- per position of the list (code slot 0..L-1 of an item, the token after it: ``<sep>`` or ``</s>``): the share
  of tokens that are forced, and the mean number of allowed tokens;
- ``free_run``: the mean number of forced tokens right after a position, over every position of every list
  (how many tokens a round whose last accepted draft ends there could add for free).

    python -m benchmarks.forced_tokens --datasets ../shared/data/beauty_atspeed ../shared/data/games_atspeed \
        ../shared/data/instruments_lcrec --out benchmarks/results

writes ``forced_tokens.json``, ``forced_tokens.md`` and ``forced_tokens.png`` (forced share per position,
per dataset). CPU only; about a minute for three datasets of 500 users.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np
import torch

from vllm_padrec.constraint import ListConstraint
from vllm_padrec.data import load_dataset
from vllm_padrec.plotting import pyplot

NAME = "forced_tokens"


def draw_lists(data, users: int, list_items: int, max_history: int, seed: int) -> tuple[list, list]:
    """(histories, lists): the first ``users`` test users' histories and, per user, ``list_items`` distinct
    items drawn by training popularity, none of them in the history."""
    counts = np.zeros(len(data.catalog))
    for sequence in data.users.values():
        np.add.at(counts, sequence.train, 1)
    weights = counts + 1e-3  # every item drawable; the popular ones far more often
    rng = np.random.default_rng(seed)
    histories, lists = [], []
    for sample in data.eval_samples("test", max_history)[:users]:
        w = weights.copy()
        w[sample.history] = 0
        lists.append(rng.choice(len(w), list_items, replace=False, p=w / w.sum()).tolist())
        histories.append(sample.history)
    return histories, lists


def measure(data, histories: list, lists: list, list_items: int) -> dict:
    """Walk the constraint through every list's completion tokens, counting the allowed tokens at each step."""
    catalog = data.catalog
    L = catalog.num_slots
    constraint = ListConstraint(catalog, num_items=list_items, no_repeat=True, max_banned=list_items + 64)
    tokens = torch.tensor([catalog.render_completion(items) for items in lists])  # [B, T]: every list T long
    state = constraint.initial_state(len(lists), histories, ban_history=True)
    allowed_counts = []
    for t in range(tokens.shape[1]):
        allowed = constraint.allowed_tokens(state)  # [B, V]
        assert bool(allowed.gather(1, tokens[:, t : t + 1]).all()), "a drawn list broke the constraint"
        allowed_counts.append(allowed.sum(1))
        state = constraint.advance(state, tokens[:, t])
    allowed = torch.stack(allowed_counts, 1).numpy()  # [B, T]
    forced = allowed == 1
    position = np.arange(tokens.shape[1]) % (L + 1)  # slot 0..L-1 of an item, then L: <sep> or </s>
    run = np.zeros_like(allowed)  # forced tokens right after each position
    for t in range(tokens.shape[1] - 2, -1, -1):
        run[:, t] = np.where(forced[:, t + 1], 1 + run[:, t + 1], 0)
    names = [f"slot {s}" for s in range(L)] + ["<sep> / </s>"]
    return {
        "dataset": data.name,
        "users": len(lists),
        "list_items": list_items,
        "tokens_per_list": int(tokens.shape[1]),
        "forced_share": round(float(forced.mean()), 4),
        "free_run": round(float(run.mean()), 3),
        "positions": [
            {
                "position": names[p],
                "forced_share": round(float(forced[:, position == p].mean()), 4),
                "mean_allowed": round(float(allowed[:, position == p].mean()), 2),
            }
            for p in range(L + 1)
        ],
    }


def markdown(payload: dict) -> str:
    lines = [
        "# Forced tokens: how much of a list the catalog alone decides (issue 14's catalog lever)",
        "",
        f"{payload['date']}; `python -m benchmarks.forced_tokens` (CPU). Lists of {payload['list_items']} items per "
        "test user, drawn by training popularity, the history banned, no repeats; each token checked against the "
        "plugin's `ListConstraint`. Forced: the only token the constraint allows. Free run: forced tokens right "
        "after a position, averaged over every position.",
        "",
        "| dataset | users | tokens a list | forced share | free run | "
        + " | ".join(p["position"] for p in payload["datasets"][0]["positions"])
        + " |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(payload["datasets"][0]["positions"]),
    ]
    for d in payload["datasets"]:
        cells = " | ".join(f"{p['forced_share']:.1%} ({p['mean_allowed']:g})" for p in d["positions"])
        lines.append(
            f"| {d['dataset']} | {d['users']} | {d['tokens_per_list']} | {d['forced_share']:.1%} | "
            f"{d['free_run']:.2f} | {cells} |"
        )
    lines += [
        "",
        "Per position: forced share (mean allowed tokens).",
    ]
    return "\n".join(lines) + "\n"


def plot(payload: dict, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7, 3.5))
    datasets = payload["datasets"]
    names = [p["position"] for p in datasets[0]["positions"]]
    width = 0.8 / len(datasets)
    for i, d in enumerate(datasets):
        x = np.arange(len(names)) + (i - (len(datasets) - 1) / 2) * width
        ax.bar(x, [100 * p["forced_share"] for p in d["positions"]], width, label=d["dataset"])
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylabel("forced tokens (%)")
    ax.set_title("Tokens the catalog alone decides, by position in an item")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", required=True, help="dataset folders (../shared/data/<name>)")
    parser.add_argument("--users", type=int, default=500, help="test users per dataset (default 500)")
    parser.add_argument("--list-items", type=int, default=10, help="items per list (default 10)")
    parser.add_argument("--max-history", type=int, default=20, help="history items kept and banned (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the drawn lists (default 0)")
    parser.add_argument("--out", default="benchmarks/results", help="folder of the results (default %(default)s)")
    args = parser.parse_args(argv)
    if args.users < 1 or args.list_items < 1 or args.max_history < 1:
        parser.error("--users, --list-items and --max-history must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = []
    for folder in args.datasets:
        data = load_dataset(folder)
        histories, lists = draw_lists(data, args.users, args.list_items, args.max_history, args.seed)
        results.append(measure(data, histories, lists, args.list_items))
        print(json.dumps(results[-1]), flush=True)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    payload = {"date": date, "list_items": args.list_items, "seed": args.seed, "datasets": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{NAME}.json").write_text(json.dumps(payload, indent=1) + "\n")
    (out / f"{NAME}.md").write_text(markdown(payload))
    plot(payload, out / f"{NAME}.png")
    print(markdown(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
