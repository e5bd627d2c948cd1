"""Constrained, PAD-Rec-accelerated recommendation lists with vLLM's offline `LLM` (needs a GPU).

    python examples/offline_vllm.py --target runs/bench/checkpoint --draft runs/drafts/padrec/draft \
        --dataset beauty_atspeed --users 8

Every list holds exactly --num-items distinct catalog items: the plugin (loaded by vLLM through the
`vllm.general_plugins` entry point) masks the target's verification logits and the draft's proposals.
"""

import argparse

from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt

from vllm_padrec.catalog import TokenLayout
from vllm_padrec.data import open_dataset
from vllm_padrec.lists import ListSpec, parse_list


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True)
    parser.add_argument("--draft", default=None, help="PAD-Rec draft folder (none: no speculation)")
    parser.add_argument("--dataset", default="beauty_atspeed")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--num-items", type=int, default=10)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.5, help="share of the GPU vLLM may take")
    args = parser.parse_args()

    data = open_dataset(args.dataset)
    catalog = data.catalog
    spec = {"method": "eagle", "model": args.draft} if args.draft else None
    llm = LLM(
        model=args.target,
        speculative_config=spec,
        max_model_len=512,
        gpu_memory_utilization=args.gpu_memory_utilization,
    )
    params = SamplingParams(
        temperature=0.0,
        max_tokens=args.num_items * (catalog.num_slots + 1),
        stop_token_ids=[TokenLayout.EOS],
        extra_args=ListSpec(constraint=True, num_items=args.num_items, no_repeat=True).to_extra_args(),
    )
    samples = data.eval_samples("test")[: args.users]
    prompts = [TokensPrompt(prompt_token_ids=catalog.render_prompt(s.history, max_history=20)) for s in samples]
    for sample, output in zip(samples, llm.generate(prompts, params)):
        items = parse_list(catalog, output.outputs[0].token_ids).items
        print(f"user {sample.user}:")
        for rank, index in enumerate(items, 1):
            print(f"  {rank:2d}. {catalog.sid_string(index)}  {catalog.titles[index]}")


if __name__ == "__main__":
    main()
