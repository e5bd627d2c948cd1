"""`vllm serve` a target checkpoint with this plugin installed and ask `/v1/completions` for lists.

Starts a real server (GPU machine), sends the test users' histories as prompt strings
(`<s><a_1><b_2>...<rec>`), greedy, and checks that every returned item parses to a catalog item.

    python -m benchmarks.serve_completions --checkpoint /tmp/padrec/bench/checkpoint \
        --dataset /tmp/padrec/data/beauty_atspeed --users 200 --out benchmarks/results

Writes `serve_completions.json` and `.md`. Extra `vllm serve` flags go after `--`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from vllm_padrec.catalog import ItemCatalog
from vllm_padrec.data import load_dataset
from vllm_padrec.testing.results import write_results
from vllm_padrec.testing.server import SERVED_NAME, VllmServer

_TOKEN = re.compile(r"<[^<>]*>")


def text_to_ids(text: str, vocab: dict[str, int]) -> list[int]:
    return [vocab.get(token, -1) for token in _TOKEN.findall(text)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--list-items", type=int, default=10)
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("vllm_args", nargs="*", help="extra `vllm serve` arguments (after --)")
    args = parser.parse_args(argv)

    catalog = ItemCatalog.load(args.checkpoint)
    data = load_dataset(args.dataset)
    samples = data.eval_samples("test")[: args.users]
    tokens = catalog.layout.token_strings()
    vocab = {t: i for i, t in enumerate(tokens)}
    max_tokens = args.list_items * (catalog.num_slots + 1)
    with VllmServer(args.checkpoint, args.vllm_args, port=args.port, log_path="/tmp/padrec_serve.log") as server:

        def ask(sample):
            prompt = "".join(tokens[t] for t in catalog.render_prompt(sample.history))
            reply = server.post_json(
                "/v1/completions",
                {
                    "model": SERVED_NAME,
                    "prompt": prompt,
                    "max_tokens": max_tokens,
                    "temperature": 0.0,
                    "stop_token_ids": [catalog.layout.EOS],
                },
            )
            return prompt, reply["choices"][0]["text"]

        t0 = time.time()
        with ThreadPoolExecutor(args.concurrency) as pool:
            answers = list(pool.map(ask, samples))
        elapsed = time.time() - t0

    valid = invalid = duplicates = 0
    examples = []
    for sample, (prompt, text) in zip(samples, answers):
        ids = text_to_ids(text, vocab)
        items = catalog.parse_completion(ids, strict=False)
        # count raw items between separators to find the invalid ones
        raw = [chunk for chunk in text.replace("</s>", "").split("<sep>") if chunk]
        invalid += len(raw) - len(items)
        valid += len(items)
        duplicates += len(items) - len(set(items))
        if len(examples) < 5:
            examples.append(
                {
                    "user": sample.user,
                    "prompt": prompt,
                    "completion": text,
                    "items": [catalog.describe(i) for i in items],
                }
            )
    record = {
        "checkpoint": args.checkpoint,
        "dataset": data.name,
        "users": len(samples),
        "list_items": args.list_items,
        "valid_items": valid,
        "invalid_items": invalid,
        "duplicate_items": duplicates,
        "seconds": round(elapsed, 2),
        "server_startup_seconds": round(server.startup_seconds, 1),
        "vllm_args": args.vllm_args,
        "examples": examples,
    }
    markdown = (
        "# `vllm serve` + `/v1/completions` on the bench target (no constraint, greedy)\n\n"
        "| users | items returned | valid | invalid | duplicates within a list | seconds |\n|---|---|---|---|---|---|\n"
        f"| {len(samples)} | {valid + invalid} | {valid} | {invalid} | {duplicates} | {elapsed:.1f} |\n\n"
        "Example:\n\n```\n" + json.dumps(examples[0], indent=2) + "\n```\n"
    )
    write_results(args.out, "serve_completions", record, markdown)
    print(json.dumps({k: v for k, v in record.items() if k != "examples"}, indent=2))
    return 0 if valid > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
