"""Ask a running `vllm serve` for a constrained recommendation list with the OpenAI Python client.

    vllm serve runs/bench/checkpoint --speculative-model runs/drafts/padrec/draft --port 8000
    python examples/openai_client.py --checkpoint runs/bench/checkpoint --history 1954 27 12030

The prompt is the history rendered as semantic-ID tokens; `vllm_xargs` turns the catalog
constraint on for this request (exactly --num-items distinct catalog items), and the reply's token ids
(`return_token_ids`) are parsed back into items.
"""

import argparse

from openai import OpenAI

from vllm_padrec.catalog import ItemCatalog
from vllm_padrec.lists import ListSpec, parse_list


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="the served target folder (holds the catalog)")
    parser.add_argument("--history", nargs="+", required=True, help="item ids, oldest first")
    parser.add_argument("--num-items", type=int, default=10)
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    args = parser.parse_args()

    catalog = ItemCatalog.load(args.checkpoint)
    tokens = catalog.layout.token_strings()
    prompt = "".join(tokens[t] for t in catalog.render_prompt(catalog.history_indices(args.history)))
    spec = ListSpec(constraint=True, num_items=args.num_items, no_repeat=True)
    client = OpenAI(base_url=args.base_url, api_key="none")
    model = client.models.list().data[0].id
    reply = client.completions.create(
        model=model,
        prompt=prompt,
        temperature=0.0,
        max_tokens=args.num_items * (catalog.num_slots + 1),
        extra_body={"vllm_xargs": spec.to_extra_args(), "return_token_ids": True},
    )
    for rank, index in enumerate(parse_list(catalog, reply.choices[0].token_ids).items, 1):
        print(f"{rank:2d}. {catalog.item_ids[index]:>8}  {catalog.sid_string(index)}  {catalog.titles[index]}")


if __name__ == "__main__":
    main()
