"""vLLM on a GPU with a tiny random target and PAD-Rec draft (runs on the H200 device machine).

Each engine runs in a fresh spawned process (in-process engine core, so that a test can read the
speculator's buffers through ``collective_rpc``), which frees the GPU between engines.

- greedy outputs with the PAD-Rec draft equal those without speculation (lossless), with and
  without the catalog constraint; constrained outputs are lists of distinct catalog items;
- the draft sees the right step index at step 0 and at every decode step, with CUDA graphs and
  eagerly: a probe draft whose proposal depends only on the step proposes token t_k at step k.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import requires_gpu

from vllm_padrec.catalog import ItemCatalog, TokenLayout
from vllm_padrec.data import SyntheticConfig, generate_synthetic
from vllm_padrec.draft import DraftConfig, PadRecDraftHead, save_draft
from vllm_padrec.integration.worker_rpc import WORKER_RPC
from vllm_padrec.target.config import get_recipe
from vllm_padrec.target.model import build_model, save_checkpoint
from vllm_padrec.target.tokenizer import build_tokenizer

pytestmark = [pytest.mark.gpu, requires_gpu]

NUM_STEPS = 3  # draft steps (n_predict) = num_speculative_tokens
NUM_ITEMS = 3  # items per constrained list
PROBE_TOKENS = [10, 11, 12]  # the probe draft proposes PROBE_TOKENS[k] at step k
# fp32 everywhere (TRITON_ATTN supports it): verifying K+1 tokens at once and decoding one at a time
# then agree to ~1e-6, so a random target's greedy choices cannot flip between the two
DTYPE = torch.float32


def catalog() -> ItemCatalog:
    return generate_synthetic(SyntheticConfig(num_items=60, num_users=4, codebook_sizes=(4, 4, 4))).catalog


def build_target(folder: Path, cat: ItemCatalog) -> tuple[Path, torch.nn.Module]:
    recipe = get_recipe(
        "tiny", hidden_size=256, num_heads=4, num_kv_heads=2, intermediate_size=512, max_history=4, list_items=NUM_ITEMS
    )
    model = build_model(recipe, cat.layout)
    return save_checkpoint(model, build_tokenizer(cat.layout), cat, recipe, folder, dtype=DTYPE), model


def build_random_draft(folder: Path, target: torch.nn.Module, cat: ItemCatalog) -> Path:
    config = DraftConfig.from_target(target.config, cat.layout, NUM_STEPS, alpha_init=0.5)
    torch.manual_seed(1)
    head = PadRecDraftHead(config)
    with torch.no_grad():  # make the step signals non-trivial
        head.step_emb.weight.normal_(std=0.1)
        head.gate.bias.fill_(1.0)
    return save_draft(head, folder, dtype=DTYPE)


def build_probe_draft(folder: Path, target: torch.nn.Module, cat: ItemCatalog) -> Path:
    """A head whose output is E_step[k] whatever its input: fc, o_proj and down_proj are zero, alpha is
    0 and the gate ~1, so f = h' = E_step[k] = c * lm_head[t_k] and the draft proposes t_k at step k."""
    config = DraftConfig.from_target(target.config, cat.layout, NUM_STEPS)
    head = PadRecDraftHead(config)
    lm_head = target.lm_head.weight.detach()  # [V, H]
    with torch.no_grad():
        head.fc.weight.zero_()
        head.layers[0].self_attn.o_proj.weight.zero_()
        head.layers[0].mlp.down_proj.weight.zero_()
        head.alpha.zero_()
        head.gate.weight.zero_()
        head.gate.bias.fill_(12.0)
        for k, token in enumerate(PROBE_TOKENS):
            head.step_emb.weight[k] = 4.0 * lm_head[token] / lm_head[token].norm()
    assert (lm_head @ head.step_emb.weight.T).argmax(0).tolist() == PROBE_TOKENS
    return save_draft(head, folder, dtype=DTYPE)


def _probe(worker) -> dict:
    runner = worker.model_runner
    speculator = getattr(runner, "speculator", None)
    lists = getattr(getattr(runner, "model_state", None), "padrec_lists", None)  # the catalog masks' owner
    return {
        "runner": type(runner).__module__,
        "speculator": type(speculator).__name__ if speculator is not None else None,
        "drafts": speculator.draft_tokens[:1].tolist() if speculator is not None else None,
        # the mask functions installed: the eager / compiled torch ones or the Triton kernel's launchers
        "masks": None if lists is None else [getattr(f, "__name__", "?") for f in (lists._verify, lists._draft)],
    }


def record_proposals(speculator_cls) -> list[list[list[int]]]:
    """Wrap ``speculator_cls.propose`` (in this process) so that every real round's drafts, [num_reqs, K],
    are kept in the returned list; warm-up and capture rounds (``dummy_run=True``) are not."""
    rounds: list[list[list[int]]] = []
    original = speculator_cls.propose

    def propose(self, *args, **kwargs):
        drafts = original(self, *args, **kwargs)
        if not kwargs.get("dummy_run", False):
            rounds.append(drafts.tolist())
        return drafts

    speculator_cls.propose = propose
    return rounds


def run_engine(
    target: str,
    draft: str | None,
    enforce_eager: bool,
    prompts,
    params,
    record_drafts=False,
    padrec=None,
    method: str = "eagle",
    env: dict | None = None,
    spec_extra: dict | None = None,
    engine_extra: dict | None = None,
    switch_loop_graph: bool = False,
) -> dict:
    """In a spawned process: generate greedily, then read the runner's speculator (and, with
    ``record_drafts``, every drafting round's proposals); ``padrec``: the plugin's additional_config;
    ``method``: the draft's speculative method (Medusa runs on Model Runner V1); ``spec_extra``: more
    ``speculative_config`` keys; ``engine_extra``: ``LLM`` arguments over the tests' (dtype, attention backend).
    ``switch_loop_graph`` (an engine with ``SWITCHABLE``): then switch padrec.decode_loop_graph off through
    worker_rpc and generate the same prompts again: ``tokens_off``, the rounds of each pass (``rounds_on``,
    ``rounds_off``) and the loop graphs' state when switched off and after the second pass."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine core in this process
    if method in ("eagle", "eagle3"):
        os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "1"
    os.environ.update(env or {})
    import vllm_padrec

    vllm_padrec.register()
    from vllm import LLM, SamplingParams

    rounds = None
    if record_drafts:
        from vllm_padrec.integration.speculator import PadRecSpeculator

        rounds = record_proposals(PadRecSpeculator)

    spec = (
        {"method": method, "model": draft, "num_speculative_tokens": NUM_STEPS, **(spec_extra or {})} if draft else None
    )
    engine = {"dtype": DTYPE, "attention_config": {"backend": "TRITON_ATTN"}, **(engine_extra or {})}
    llm = LLM(
        model=target,
        speculative_config=spec,
        max_model_len=256,
        seed=0,
        gpu_memory_utilization=0.15,
        enforce_eager=enforce_eager,
        additional_config={"padrec": padrec} if padrec else {},
        **engine,
    )
    # rounds before the prompts: Model Runner V2's kernel warm-up drafts for its own requests (gpu/warmup.py)
    warmup = len(rounds) if rounds is not None else 0
    sampling = [SamplingParams(temperature=0.0, **p) for p in params]
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], sampling, use_tqdm=False)
    result = {"tokens": [list(o.outputs[0].token_ids) for o in outputs], "rounds": rounds}
    if switch_loop_graph:
        split = len(rounds)
        result["switched_off"] = llm.collective_rpc("padrec_decode_loop_graph", args=(False,))[0]
        again = llm.generate([{"prompt_token_ids": p} for p in prompts], sampling, use_tqdm=False)
        result["tokens_off"] = [list(o.outputs[0].token_ids) for o in again]
        result["rounds_on"], result["rounds_off"] = rounds[warmup:split], rounds[split:]
        result["after_off"] = llm.collective_rpc("padrec_decode_loop_graph")[0]
    return {**result, **llm.collective_rpc(_probe)[0]}


def in_subprocess(*args, function=run_engine) -> dict:
    """``function(*args)`` in a fresh spawned process (an engine there frees the GPU when the process ends)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu")
    cat = catalog()
    target, model = build_target(root / "target", cat)
    rng = np.random.default_rng(0)
    prompts = [cat.render_prompt(rng.choice(len(cat), 4, replace=False).tolist()) for _ in range(6)]
    L = cat.num_slots
    constrained = {"padrec_constraint": 1, "padrec_num_items": NUM_ITEMS, "padrec_no_repeat": 1}
    params = [dict(max_tokens=24)] * 3 + [dict(max_tokens=NUM_ITEMS * (L + 1) + 2, extra_args=constrained)] * 3
    return {
        "catalog": cat,
        "target": str(target),
        "random_draft": str(build_random_draft(root / "draft", model, cat)),
        "probe_draft": str(build_probe_draft(root / "probe", model, cat)),
        "prompts": prompts,
        "params": params,
    }


@pytest.fixture(scope="module")
def baseline(setup):
    return in_subprocess(setup["target"], None, False, setup["prompts"], setup["params"])


def check_constrained(cat: ItemCatalog, tokens: list[int]) -> None:
    items = cat.parse_completion(tokens, strict=True)  # raises on anything but catalog items
    body = tokens[:-1] if tokens and tokens[-1] == TokenLayout.EOS else tokens
    assert body == cat.render_items(items) and len(set(items)) == len(items) == NUM_ITEMS, tokens


def test_constrained_outputs_without_speculation(setup, baseline):
    assert baseline["runner"] == "vllm.v1.worker.gpu.model_runner" and baseline["speculator"] is None
    for tokens in baseline["tokens"][3:]:
        check_constrained(setup["catalog"], tokens)


MASKS = {  # additional_config["padrec"] -> the mask functions it installs (verification, draft)
    "triton": ({}, ["catalog_mask_verification", "catalog_mask_draft"]),  # the default: the fused kernel
    # torch.compile keeps the functions' names
    "compiled": ({"triton_masks": False}, ["mask_verification_logits", "mask_draft_logits"]),
}


@pytest.mark.parametrize("masks", sorted(MASKS))
def test_greedy_speculation_is_lossless(setup, baseline, masks):
    """Greedy outputs with the PAD-Rec draft equal those without, constrained rows included; the masks
    run on the verification rows and, inside the captured drafting graphs, on the draft's proposals."""
    padrec, installed = MASKS[masks]
    result = in_subprocess(
        setup["target"], setup["random_draft"], False, setup["prompts"], setup["params"], False, padrec
    )
    assert result["speculator"] == "PadRecSpeculator"
    assert result["masks"] == installed
    assert result["tokens"] == baseline["tokens"]  # constrained rows included
    for tokens in result["tokens"][3:]:
        check_constrained(setup["catalog"], tokens)


def test_greedy_speculation_with_a_forced_tail_is_lossless(setup, baseline):
    """padrec.forced_tail: the last 2 of each step's drafts come from the catalog alone (forced_tail.py), and
    greedy outputs still equal those without speculation; separators, forced after an item's last code, show
    up in the tail's slots."""
    result = in_subprocess(
        setup["target"], setup["random_draft"], False, setup["prompts"], setup["params"], True, {"forced_tail": 2}
    )
    assert result["speculator"] == "PadRecSpeculator"
    assert result["tokens"] == baseline["tokens"]
    for tokens in result["tokens"][3:]:
        check_constrained(setup["catalog"], tokens)
    assert any(TokenLayout.SEP in row[-2:] for drafts in result["rounds"] for row in drafts)


def test_greedy_speculation_with_a_batch_size_table_is_lossless(setup, baseline):
    """vLLM's batch-size table (``num_speculative_tokens_per_batch_size``, what the adaptive policy writes)
    with drafts below num_speculative_tokens, and none at all, under CUDA graphs: the engine starts (vLLM 0.26.0
    alone fails capturing the draft's decode graphs, ``PadRecSpeculator.init_cudagraph_manager``) and greedy
    outputs equal those without speculation."""
    # 6 prompts: all drafts while 5 or 6 rows run, one fewer once 4 or fewer do; 0 is captured, never run here
    table = [[1, 4, NUM_STEPS - 1], [5, 6, NUM_STEPS], [7, 256, 0]]
    spec_extra = {"num_speculative_tokens_per_batch_size": table}
    result = in_subprocess(
        setup["target"],
        setup["random_draft"],
        False,
        setup["prompts"],
        setup["params"],
        False,
        None,
        "eagle",
        None,
        spec_extra,
    )
    assert result["speculator"] == "PadRecSpeculator"
    assert result["tokens"] == baseline["tokens"]
    for tokens in result["tokens"][3:]:
        check_constrained(setup["catalog"], tokens)


LOOP_CASES = {  # (speculative_config extras, LLM extras)
    "gamma": (None, None),
    # rounds of K = 3 (5-6 requests running) replay a loop of 2 decode steps, rounds of K = 2 run vLLM's loop
    "table": ({"num_speculative_tokens_per_batch_size": [[1, 4, NUM_STEPS - 1], [5, 6, NUM_STEPS], [7, 256, 0]]}, None),
    # FlashAttention 3, whose persistent scheduler metadata of step 1 serves the loop's later steps; bfloat16, so
    # the lists are compared with vLLM's loop, not with the float32 baseline
    "fa3": (None, {"dtype": torch.bfloat16, "attention_config": {"backend": "FLASH_ATTN"}}),
}


# an engine whose loop graph the test switches (worker_rpc), without prefix caching: the second pass of the same
# prompts then runs exactly as the first, but for the loop
SWITCHABLE = {"worker_extension_cls": WORKER_RPC, "enable_prefix_caching": False}


@pytest.mark.parametrize("case", sorted(LOOP_CASES))
def test_the_decode_loop_graph_drafts_what_vllms_loop_drafts(setup, baseline, case):
    """padrec.decode_loop_graph (decode_loop_graph.py): in one engine, the prompts with the loop graphs, then again
    with them switched off through worker_rpc (vLLM's step-by-step loop): every round's drafts are equal, the graphs
    served rounds of the first pass and none of the second, and the lists are equal (and, in float32, those without
    speculation). An earlier form of this test, two engines with the setting on and off, passed "gamma" on the
    H200 (2026-12-03, sixth hold); this one-engine form has not run on the GPU yet."""
    spec_extra, engine_extra = LOOP_CASES[case]
    args = (setup["target"], setup["random_draft"], False, setup["prompts"], setup["params"], True)
    engine = {**(engine_extra or {}), **SWITCHABLE}
    result = in_subprocess(*args, {"decode_loop_graph": True}, "eagle", None, spec_extra, engine, True)
    switched_off = result["switched_off"]  # the graphs' state after the first pass
    assert switched_off["graphs"] > 0 and switched_off["replays"] > 0 and not switched_off["enabled"], switched_off
    assert result["after_off"] == switched_off  # the second pass ran vLLM's loop in every round
    on, off = result["rounds_on"], result["rounds_off"]
    differ = [i for i, (a, b) in enumerate(zip(on, off)) if a != b]
    first = (on[differ[0]], off[differ[0]]) if differ else None
    assert on and on == off, f"{len(on)} rounds on, {len(off)} off; differing rounds {differ[:5]}, first {first}"
    assert result["tokens"] == result["tokens_off"]
    if engine_extra is None:
        assert result["tokens"] == baseline["tokens"]
    for tokens in result["tokens"][3:]:
        check_constrained(setup["catalog"], tokens)


def run_tallied_engine(target: str, draft: str, prompts, params, async_scheduling: bool) -> dict:
    """In a spawned process: an engine with vLLM's stat loggers on and worker_rpc; its own acceptance tally
    started after the engine is built, then the prompts; the tally's counts, vLLM's counters over them, and how
    many requests stopped on a token (``stopped``) rather than at their max_tokens."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "1"
    import vllm_padrec

    vllm_padrec.register()
    from vllm import LLM, SamplingParams

    from vllm_padrec.integration.acceptance_tally import COUNT_NAMES
    from vllm_padrec.integration.spec_decode_counters import SPEC_COUNTERS, SPEC_PER_POS, read_spec_decode_counters

    llm = LLM(
        model=target,
        speculative_config={"method": "eagle", "model": draft, "num_speculative_tokens": NUM_STEPS},
        max_model_len=256,
        seed=0,
        gpu_memory_utilization=0.15,
        dtype=DTYPE,
        attention_config={"backend": "TRITON_ATTN"},
        disable_log_stats=False,
        async_scheduling=async_scheduling,
        worker_extension_cls=WORKER_RPC,
    )
    before = read_spec_decode_counters() or dict.fromkeys(SPEC_COUNTERS, 0) | {SPEC_PER_POS: [0] * NUM_STEPS}
    started = llm.collective_rpc("padrec_acceptance", args=(True,))[0]
    sampling = [SamplingParams(temperature=0.0, **p) for p in params]
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], sampling, use_tqdm=False)
    tally = llm.collective_rpc("padrec_acceptance", args=(False,))[0]
    after = read_spec_decode_counters()
    per_pos = [a - b for a, b in zip(after[SPEC_PER_POS], before[SPEC_PER_POS] or [0] * NUM_STEPS)]
    vllms = dict(zip(COUNT_NAMES, (after[n] - before[n] for n in SPEC_COUNTERS)))
    stopped = sum(o.outputs[0].finish_reason == "stop" for o in outputs)
    return {"started": started, "tally": tally, "vllms": vllms | {"per_pos": per_pos}, "stopped": stopped}


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_the_engines_own_acceptance_tally_counts_what_vllms_counters_count(setup, async_scheduling):
    """``worker_rpc.padrec_acceptance`` (acceptance_tally.py, what bench_spec_decode --rivals reads from engines
    without stat loggers) over the prompts, free and constrained: rounds, draft tokens, accepted tokens and accepted
    drafts by position equal vLLM's own counters over the same calls without asynchronous scheduling. With it
    (vLLM's default), the tally also counts the frame that a request finished while its next step ran had in
    flight, which vLLM's scheduler discards uncounted: one round of NUM_STEPS drafts for each request that stopped
    on a token (on the H200, 2026-12-04: 94 rounds against 91 over six requests, three of them constrained lists that
    stop on their end token)."""
    result = in_subprocess(
        setup["target"],
        setup["random_draft"],
        setup["prompts"],
        setup["params"],
        async_scheduling,
        function=run_tallied_engine,
    )
    assert result["started"] == {"rounds": 0, "draft_tokens": 0, "accepted": 0, "per_pos": [0] * NUM_STEPS}
    tally, vllms = result["tally"], result["vllms"]
    assert tally["rounds"] > 0 and result["stopped"] > 0  # the constrained lists stop on their end token
    if not async_scheduling:
        assert tally == vllms
        return
    in_flight = tally["rounds"] - vllms["rounds"]
    assert result["stopped"] <= in_flight <= len(setup["prompts"])
    assert tally["draft_tokens"] - vllms["draft_tokens"] == NUM_STEPS * in_flight
    assert tally["accepted"] >= vllms["accepted"]
    assert all(ours >= theirs for ours, theirs in zip(tally["per_pos"], vllms["per_pos"]))


@pytest.mark.parametrize("enforce_eager", [False, True], ids=["cuda_graphs", "eager"])
def test_draft_sees_its_step(setup, baseline, enforce_eager):
    prompts, params = setup["prompts"][:3], setup["params"][:3]  # unconstrained: drafts are not masked
    result = in_subprocess(setup["target"], setup["probe_draft"], enforce_eager, prompts, params, True)
    assert result["speculator"] == "PadRecSpeculator"
    rounds = result["rounds"]
    assert rounds, "no drafting round was recorded"
    # draft k of every request in every round came from E_step[k]
    wrong = [(i, r) for i, r in enumerate(rounds) if any(row != PROBE_TOKENS for row in r)]
    assert not wrong, f"{len(wrong)} of {len(rounds)} rounds proposed other drafts (first: {wrong[:3]})"
    assert result["drafts"] == [PROBE_TOKENS]  # the buffer after the last round
    assert result["tokens"] == baseline["tokens"][:3]


def test_register_does_not_initialize_cuda():
    """register() runs in vLLM's front-end processes too, which must not touch CUDA before they fork."""
    code = "import torch, vllm_padrec; vllm_padrec.register(); assert not torch.cuda.is_initialized()"
    subprocess.run([sys.executable, "-c", code], check=True)


def build_eagle_and_medusa_drafts(root: Path, target: torch.nn.Module, cat: ItemCatalog) -> tuple[Path, Path]:
    """vLLM's own draft formats, random weights: an EAGLE head (``EagleLlamaForCausalLM``) and Medusa heads."""
    from vllm_padrec.draft import MedusaHeads

    torch.manual_seed(2)
    eagle = PadRecDraftHead(DraftConfig.from_target(target.config, cat.layout, NUM_STEPS, variant="eagle"))
    medusa = MedusaHeads.from_target(target, NUM_STEPS)
    return save_draft(eagle, root / "eagle", dtype=DTYPE), save_draft(medusa, root / "medusa", dtype=DTYPE)


def test_padrec_then_eagle_then_medusa_engines_share_one_compile_cache(setup, baseline, tmp_path):
    """On one machine, with one vLLM compile cache (VLLM_CACHE_ROOT) and CUDA graphs and torch.compile on:
    an engine with the PAD-Rec draft, then one with vLLM's EAGLE draft, then one with Medusa heads. The
    EAGLE engine once loaded the PAD-Rec draft's compiled graph from the cache and died at its first draft
    step; each must start and stay lossless now."""
    from transformers import AutoModelForCausalLM

    target_model = AutoModelForCausalLM.from_pretrained(setup["target"], dtype=DTYPE)
    eagle, medusa = build_eagle_and_medusa_drafts(tmp_path, target_model, setup["catalog"])
    env = {"VLLM_CACHE_ROOT": str(tmp_path / "vllm_cache")}  # one cache for all three, as ~/.cache/vllm is
    for draft, method, speculator in (
        (setup["random_draft"], "eagle", "PadRecSpeculator"),
        (str(eagle), "eagle", "PadRecSpeculator"),  # vLLM's EAGLE draft, masked like ours (padrec.mask_drafts)
        (str(medusa), "medusa", None),
    ):
        # Medusa runs on Model Runner V1, where the plugin refuses constrained requests (no masks there)
        n = 3 if method == "medusa" else len(setup["prompts"])
        result = in_subprocess(
            setup["target"], draft, False, setup["prompts"][:n], setup["params"][:n], False, None, method, env
        )
        if speculator is not None:  # Model Runner V2
            assert result["speculator"] == speculator, (method, result["speculator"])
        assert result["tokens"] == baseline["tokens"][:n], method  # lossless (constrained rows included on V2)
    assert any((tmp_path / "vllm_cache").rglob("*")), "the engines wrote no compile cache"
