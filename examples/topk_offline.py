"""Top-K recommendation by beam search inside vLLM's engine, with the offline `LLM` (needs a GPU).

    python examples/topk_offline.py --target runs/bench/checkpoint --dataset beauty_atspeed --k 20 --users 8

Each user's K best single items, best first, with their scores (summed full-vocabulary log-probabilities):
the answer of the plain-torch reference beam search (`vllm-padrec topk`) for the same model and catalog.
`topk_engine_args` holds beam rows for `--users` requests of K beams at once (`padrec.topk_max_beams`).
Over HTTP: `POST /v1/recommendations` with `{"history": [...], "mode": "topk", "k": 20}` on a server
started with `--additional-config '{"padrec": {"topk_max_beams": N}}'`.
"""

import argparse

from vllm import LLM

from vllm_padrec.catalog import ItemCatalog
from vllm_padrec.data import open_dataset
from vllm_padrec.integration.recommendation_service import read_max_history
from vllm_padrec.topk.offline import recommend_topk, topk_engine_args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="the target checkpoint folder (holding its catalog)")
    parser.add_argument("--dataset", default="beauty_atspeed", help="dataset whose test users are ranked")
    parser.add_argument("--k", type=int, default=20, help="items per user (default 20)")
    parser.add_argument("--users", type=int, default=8, help="test users, answered together (default 8)")
    parser.add_argument("--exclude-history", action="store_true", help="never recommend a user's own items")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.5, help="share of the GPU vLLM may take")
    args = parser.parse_args()

    catalog = ItemCatalog.load(args.target)
    max_history = read_max_history(args.target) or 20
    samples = open_dataset(args.dataset).eval_samples("test", max_history)[: args.users]
    llm = LLM(
        args.target,
        max_model_len=512,
        gpu_memory_utilization=args.gpu_memory_utilization,
        **topk_engine_args(max_k=args.k, concurrent_users=len(samples)),
    )
    histories = [s.history for s in samples]
    ranked = recommend_topk(
        llm, catalog, histories, k=args.k, exclude_history=args.exclude_history, max_history=max_history
    )
    for sample, items in zip(samples, ranked):
        print(f"user {sample.user}:")
        for rank, (index, score) in enumerate(items, 1):
            print(f"  {rank:2d}. {catalog.sid_string(index)}  {score:8.3f}  {catalog.titles[index]}")


if __name__ == "__main__":
    main()
