"""Top-K recommendation inside vLLM on a GPU (issue 12), against the plain-torch reference beam search.

The tiny random target of ``test_integration_gpu`` (float32). Each engine runs in a spawned process
with Triton's float32 dots in IEEE precision (``TRITON_F32_DEFAULT=ieee``: vLLM's float32 attention is a
Triton kernel, TF32 by Triton's default), CUDA graphs on.

- the engine's K items, in order, are the reference's (``decoding.beam_search_items`` on the Hugging
  Face model), with the reference's scores, for K = 1, 5 and 20, with and without the history excluded;
- a top-K call (all users queued together) runs L model forwards (R's max_tokens is L, so async scheduling
  adds none) in L + 1 engine steps, the beam rows it held are released once it is answered, and its KV
  copies ran in the Triton kernel (no fallback to the reference);
- lists and top-K requests queued together: every list is the one the engine writes alone;
- K = 256 on a catalog of 300 items (the issue's "K up to at least 256"): the reference's items and order;
- drafted rounds (issue 13, ``padrec.topk_draft_beams`` 1 and 3 with a random PAD-Rec head as vLLM's draft):
  the strict rule's K items, in order, are the reference's, in at most L forwards a call; and with rounds
  that complete items early (K = 1, N = 16 on a catalog of 4 codes a level), then K = 5 on the same users;
- ``vllm serve`` with top-K on answers ``POST /v1/recommendations`` in top-K mode with the offline answer,
  refuses a K out of range with a 422 naming ``k``, and keeps serving lists; with a draft
  (``--speculative-model``, drafted rounds) it answers ``"verification": "strict"`` with the reference's
  answer and ``"relaxed"`` with K distinct items, and refuses an unknown rule.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from conftest import requires_gpu
from test_integration_gpu import NUM_STEPS, build_random_draft, build_target, catalog, in_subprocess

from vllm_padrec.catalog import ItemCatalog
from vllm_padrec.testing.timing import EngineSteps, in_process_model_runner

pytestmark = [pytest.mark.gpu, requires_gpu]

DRAFT_GAMMA = min(2, NUM_STEPS)  # draft tokens per beam row in a drafted round
TOPK_ENV = {"TRITON_F32_DEFAULT": "ieee"}  # float32 equality with the reference needs IEEE dots
KS = (1, 5, 20)
USERS = 6
LIST_ITEMS = 3
SCORE_TOLERANCE = 1e-4  # float32 sums of L log-probabilities, two implementations of the same model


def histories(cat: ItemCatalog) -> list[list[int]]:
    rng = np.random.default_rng(3)
    return [rng.choice(len(cat), 4, replace=False).tolist() for _ in range(USERS)]


def _beam_rows_live(engine_core) -> int:
    from vllm_padrec.integration.patches.scheduler_init import beam_rows_in_use

    return beam_rows_in_use(engine_core.scheduler)


def topk_llm(target: str, max_k: int, concurrent_users: int, **drafted):
    """In a spawned process: an in-process engine of ``target`` (TOPK_ENV), float32,
    sized by ``topk_engine_args`` (``drafted``: its draft arguments)."""
    os.environ.update({"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_USE_V2_MODEL_RUNNER": "1", **TOPK_ENV})
    import vllm_padrec

    vllm_padrec.register()
    from vllm import LLM

    from vllm_padrec.topk.offline import topk_engine_args

    return LLM(
        model=target,
        dtype=torch.float32,
        max_model_len=256,
        seed=0,
        gpu_memory_utilization=0.15,
        attention_config={"backend": "TRITON_ATTN"},
        **topk_engine_args(max_k, concurrent_users, **drafted),
    )


def run_wide_topk(target: str, users: list[list[int]], k: int) -> list[list[tuple[int, float]]]:
    """In a spawned process: K items per user from an engine whose beam rows hold every user at K."""
    from vllm_padrec.topk.offline import recommend_topk

    llm = topk_llm(target, k, len(users))
    return recommend_topk(llm, ItemCatalog.load(target), users, k)


def run_drafted_topk(target: str, draft: str, users: list[list[int]], draft_beams: int) -> dict:
    """In a spawned process: every K's answers (all users queued together) from an engine that drafts its top-K
    beams (``draft`` as vLLM's speculative model, N = ``draft_beams``, gamma = DRAFT_GAMMA), strict, with the
    forwards a call ran."""
    from vllm_padrec.topk.offline import recommend_topk

    llm = topk_llm(target, max(KS), USERS, draft=draft, gamma=DRAFT_GAMMA, draft_beams=draft_beams)
    cat = ItemCatalog.load(target)
    steps = EngineSteps(llm)
    answers, forwards = {}, {}
    for k in KS:
        before = steps.forwards
        answers[k] = recommend_topk(llm, cat, users, k, verification="strict")
        forwards[k] = steps.forwards - before
    return {
        "answers": answers,
        "forwards": forwards,
        "live_at_end": _beam_rows_live(llm.llm_engine.engine_core.engine_core),
    }


def run_topk_engine(target: str, users: list[list[int]]) -> dict:
    """In a spawned process: top-K answers for every K (all users queued together), then lists and top-K
    requests queued together next to the same lists alone."""
    llm = topk_llm(target, max(KS), 2 * USERS)  # lists and top-K requests queued together
    from vllm import SamplingParams
    from vllm.outputs import PoolingRequestOutput

    from vllm_padrec.topk.offline import external_request_id, recommend_topk
    from vllm_padrec.topk.request import ranked_items, topk_max_tokens, topk_sampling_params, topk_spec

    cat = ItemCatalog.load(target)
    core = llm.llm_engine.engine_core.engine_core
    steps = EngineSteps(llm)
    answers, steps_per_call = {}, {}
    for k in KS:
        for exclude in (False, True):
            before = steps.count, steps.forwards
            answers[f"{k}_{exclude}"] = recommend_topk(llm, cat, users, k, exclude_history=exclude)
            steps_per_call[f"{k}_{exclude}"] = (steps.count - before[0], steps.forwards - before[1])
    live_after = _beam_rows_live(core)

    list_params = SamplingParams(
        temperature=0.0,
        max_tokens=LIST_ITEMS * (cat.num_slots + 1) + 2,
        extra_args={"padrec_constraint": 1, "padrec_num_items": LIST_ITEMS, "padrec_no_repeat": 1},
    )
    prompts = [{"prompt_token_ids": cat.render_prompt(h)} for h in users]
    alone = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, [list_params] * USERS, use_tqdm=False)]
    k = max(KS)
    topk_params = topk_sampling_params(topk_spec(k), topk_max_tokens(cat.num_slots))
    list_ids = llm.enqueue(prompts, [list_params] * USERS, use_tqdm=False)
    topk_ids = llm.enqueue(prompts, [topk_params] * USERS, use_tqdm=False)
    finished = {o.request_id: o for o in llm.wait_for_completion(use_tqdm=False)}
    external = [external_request_id(i) for i in list_ids], [external_request_id(i) for i in topk_ids]
    together = [list(finished[i].outputs[0].token_ids) for i in external[0]]
    mixed_topk = []
    for i in external[1]:
        assert isinstance(finished[i], PoolingRequestOutput)
        mixed_topk.append(ranked_items(finished[i], cat).items)
    return {
        "answers": answers,
        "steps_per_call": steps_per_call,
        "live_after": live_after,
        "live_at_end": _beam_rows_live(core),
        # the KV copies ran in the Triton kernel (kv_copy.BlockCopier falls back to the reference on a failure)
        "kv_copy_kernel": in_process_model_runner(llm).model_state.padrec_topk_engine.copy_blocks.pointers is not None,
        "lists_alone": alone,
        "lists_together": together,
        "topk_together": mixed_topk,
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("topk")
    cat = catalog()
    target, model = build_target(root / "target", cat)
    return {"catalog": cat, "target": str(target), "model": model.to("cuda").eval(), "users": histories(cat)}


@pytest.fixture(scope="module")
def engine(setup):
    return in_subprocess(setup["target"], setup["users"], function=run_topk_engine)


def reference(setup, k: int, exclude: bool) -> list[list[tuple[int, float]]]:
    from vllm_padrec.decoding import beam_search_items

    cat = setup["catalog"]
    return beam_search_items(setup["model"], cat, setup["users"], k, batch_size=1, ban_history=exclude)


@pytest.mark.parametrize("exclude", [False, True])
@pytest.mark.parametrize("k", KS)
def test_the_engine_ranks_items_as_the_reference(setup, engine, k, exclude):
    got = [[(item, score) for item, score in user] for user in engine["answers"][f"{k}_{exclude}"]]
    want = reference(setup, k, exclude)
    assert [[i for i, _ in u] for u in got] == [[i for i, _ in u] for u in want]
    for ours, theirs in zip(got, want):
        assert np.allclose([s for _, s in ours], [s for _, s in theirs], rtol=0, atol=SCORE_TOLERANCE)
    for user, history in zip(got, setup["users"]):
        assert len(user) == k and len({i for i, _ in user}) == k
        assert not exclude or not {i for i, _ in user} & set(history)


def test_a_top_k_call_runs_item_length_forwards_and_releases_its_beam_rows(setup, engine):
    L = setup["catalog"].num_slots
    assert set(engine["steps_per_call"].values()) == {(L + 1, L)}  # L forwards, then the step that answers
    assert engine["live_after"] == 0 and engine["live_at_end"] == 0
    assert engine["kv_copy_kernel"]


def test_lists_queued_with_top_k_requests_are_the_lists_written_alone(setup, engine):
    assert engine["lists_together"] == engine["lists_alone"]
    want = reference(setup, max(KS), False)
    assert [[i for i, _ in u] for u in engine["topk_together"]] == [[i for i, _ in u] for u in want]


@pytest.mark.parametrize("draft_beams", [1, 3])
def test_drafted_strict_rounds_rank_items_as_the_reference(setup, tmp_path, draft_beams):
    """Issue 13's first runs in vLLM: strict verification keeps the beam search's answer whatever the draft (a
    random head here), with V2's greedy chains (N = 1) and with the draft's own beam search in propose (N = 3),
    and a call runs at most L forwards (a round advances at least one beam step)."""
    draft = build_random_draft(tmp_path / "draft", setup["model"], setup["catalog"])  # reads the target's config
    got = in_subprocess(setup["target"], str(draft), setup["users"], draft_beams, function=run_drafted_topk)
    for k in KS:
        want = reference(setup, k, False)
        answers = got["answers"][k]
        assert [[i for i, _ in u] for u in answers] == [[i for i, _ in u] for u in want], k
        for ours, theirs in zip(answers, want):
            assert np.allclose([s for _, s in ours], [s for _, s in theirs], rtol=0, atol=SCORE_TOLERANCE)
        assert got["forwards"][k] <= setup["catalog"].num_slots, got["forwards"]
    assert got["live_at_end"] == 0


def test_drafted_round_functions_replayed_from_cuda_graphs_equal_eager_runs(monkeypatch):
    """``topk/graphed.py`` on CUDA: the draft's beam steps and the strict and relaxed verification of rounds at
    the must-show's shape (K = 20, N = 40, gamma 3), captured once and replayed for other inputs, equal eager
    runs bit for bit, and every signature was captured (no eager fallback)."""
    from vllm_padrec.topk import draft_search
    from vllm_padrec.topk.admission import beam_rows
    from vllm_padrec.topk.draft_search import DraftSearcher, draft_rows_step
    from vllm_padrec.topk.graphed import GraphedFunction
    from vllm_padrec.topk.relaxed import gumbel_noise
    from vllm_padrec.topk.rounds import relaxed_outcome, strict_outcome

    K, N, gamma, V, L = 20, 40, 3, 300, 4
    R = beam_rows(K, N, gamma)
    monkeypatch.setattr(draft_search, "GRAPHED_DRAFT_STEP", draft_rows_step)  # DraftSearcher.advance: eager
    step = GraphedFunction(draft_rows_step)
    strict, relaxed = GraphedFunction(strict_outcome), GraphedFunction(relaxed_outcome)
    for seed in range(3):
        g = torch.Generator(device="cuda").manual_seed(seed)
        start = torch.randn(1, K, device="cuda", generator=g).sort(descending=True).values
        graphed_search, eager_search = (DraftSearcher(start, R, gamma, N, keep_logprobs=True) for _ in range(2))
        for _ in range(gamma):
            logprobs = torch.log_softmax(3 * torch.randn(1, R, V, device="cuda", generator=g), -1)
            graphed_search.rows, graphed_search.step = step(graphed_search.rows, logprobs, N)
            eager_search.advance(logprobs)  # draft_rows_step, eagerly, with the log-probs kept for relaxed
            for name in ("root", "chain", "used", "scores", "beam_row", "depth"):
                assert torch.equal(getattr(graphed_search.rows, name), getattr(eager_search.rows, name)), name
        search = eager_search.result()
        root, chain, live = search.rows.round_rows()
        row_logprobs = torch.log_softmax(3 * torch.randn(1, R, gamma + 1, V, device="cuda", generator=g), -1)
        codes = torch.randint(0, V, (1, K, L), device="cuda", generator=g)
        beams = (codes, torch.randn(1, K, L, device="cuda", generator=g), torch.tensor([1], device="cuda"))
        args = (start, root, chain, live, row_logprobs, torch.tensor([3], device="cuda"), *beams)
        noise = (1, gamma, K * V)
        uniform = torch.rand(noise, device="cuda", generator=g, dtype=torch.float64)
        gumbels = gumbel_noise(noise, generator=g, device="cuda", dtype=torch.float64)
        relaxed_args = (*args[:4], search.rows.depth, search.logprobs, *args[4:], uniform, gumbels)
        for graphed, eager, given in ((strict, strict_outcome, args), (relaxed, relaxed_outcome, relaxed_args)):
            got, want = graphed(*given), eager(*given)
            for name in ("source_row", "sampled", "num_sampled", "codes", "logprobs", "scores", "steps_done", "done"):
                assert torch.equal(getattr(got, name), getattr(want, name)), (eager.__name__, name)
    assert all(r is not None for f in (step, strict, relaxed) for r in f.replays.values())
    assert len(step.replays) == gamma and len(strict.replays) == len(relaxed.replays) == 1  # one signature each


EARLY_GAMMA, EARLY_DRAFT_BEAMS = 2, 16  # with 4 codes a level, 16 draft beams hold every 2-code path


def run_early_finishing_topk(target: str, draft: str, users: list[list[int]]) -> dict:
    """In a spawned process: K = 1 for every user twice (rounds that complete the item early; the second pass
    finds the first pass's block ids in the rows' block tables past their own blocks), then K = 5 for the same
    users (their prompts now prefix-cache hits), strict, on one engine: each pass's answers."""
    from vllm_padrec.topk.offline import recommend_topk

    llm = topk_llm(target, 5, len(users), draft=draft, gamma=EARLY_GAMMA, draft_beams=EARLY_DRAFT_BEAMS)
    cat = ItemCatalog.load(target)
    return [(k, recommend_topk(llm, cat, users, k, verification="strict")) for k in (1, 1, 5)]


def test_drafted_items_completed_early_leave_the_kv_of_other_requests_alone(tmp_path):
    """Issue 13's first bench run: after a K = 1 pass whose rounds completed items early, the K >= 5 passes on
    the same users were not the reference's (the step async scheduling adds after such a round wrote one
    position past the rows' private blocks, where P mod bs + L - 1 + gamma is a multiple of bs, into blocks
    that other requests held, cached prompt blocks among them). Here an item of L = 4 codes, N = 16 draft
    beams (every 2-code path: each round accepts every step it drafts, whatever the draft), users of every
    prompt length modulo the block size: every pass must be the reference's."""
    from vllm_padrec.data import SyntheticConfig, generate_synthetic
    from vllm_padrec.decoding import beam_search_items

    cat = generate_synthetic(SyntheticConfig(num_items=120, num_users=4, codebook_sizes=(4, 4, 4, 4))).catalog
    assert cat.num_slots == 4
    target, model = build_target(tmp_path / "target", cat)
    draft = build_random_draft(tmp_path / "draft", model, cat)
    rng = np.random.default_rng(7)
    users = [rng.choice(len(cat), n, replace=False).tolist() for n in range(1, 17)]  # P = 1 + 5 n: every P mod 16
    assert len({len(cat.render_prompt(u)) % 16 for u in users}) == 16
    got = in_subprocess(str(target), str(draft), users, function=run_early_finishing_topk)
    model = model.to("cuda").eval()
    for k, answers in got:
        want = beam_search_items(model, cat, users, k, batch_size=1)
        assert [[i for i, _ in u] for u in answers] == [[i for i, _ in u] for u in want], k
        for ours, theirs in zip(answers, want):
            assert np.allclose([s for _, s in ours], [s for _, s in theirs], rtol=0, atol=SCORE_TOLERANCE)


def test_served_top_k_answers_and_refusals(setup, engine, tmp_path):
    """The route's 422 for k out of 1..max_topk is the CPU tests' (test_integration_endpoint), here on vLLM."""
    from vllm_padrec.testing.server import SERVED_NAME, VllmServer, engine_deaths
    from vllm_padrec.topk.offline import topk_engine_args

    cat = setup["catalog"]
    sized = topk_engine_args(max(KS), USERS)
    args = ["--dtype", "float32", "--max-model-len", "256", "--gpu-memory-utilization", "0.15"]
    args += [
        "--max-num-seqs",
        str(sized["max_num_seqs"]),
        "--max-num-batched-tokens",
        str(sized["max_num_batched_tokens"]),
    ]
    args += ["--attention-backend", "TRITON_ATTN", "--additional-config", json.dumps(sized["additional_config"])]
    with VllmServer(setup["target"], args, port=8041, log_path=tmp_path / "serve.log", env=TOPK_ENV) as server:
        for user, history in enumerate(setup["users"][:2]):
            body = {"history": [cat.item_ids[i] for i in history], "mode": "topk", "k": 5}
            answer = server.post_json("/v1/recommendations", body)
            assert answer["mode"] == "topk" and [item["rank"] for item in answer["items"]] == [1, 2, 3, 4, 5]
            offline = engine["answers"]["5_False"][user]
            assert [item["item_id"] for item in answer["items"]] == [cat.item_ids[i] for i, _ in offline]
            assert np.allclose([item["score"] for item in answer["items"]], [s for _, s in offline], atol=1e-5)
            assert all(item["semantic_id"] for item in answer["items"])
        history = [cat.item_ids[i] for i in setup["users"][0]]
        for k in (0, max(KS) + 1):  # out of 1..max_topk
            body = json.dumps({"history": history, "mode": "topk", "k": k})
            status, answer, _ = server.post("/v1/recommendations", body)
            assert status == 422 and "k" in json.dumps(answer), (k, status, answer)
        listed = {"model": SERVED_NAME, "history": history, "num_items": LIST_ITEMS}
        assert len(server.post_json("/v1/recommendations", listed)["items"]) == LIST_ITEMS
        assert server.healthy() and engine_deaths(server.log_text()) == 0


def test_served_drafted_top_k_answers_strict_and_relaxed_and_refuses_an_unknown_rule(setup, tmp_path):
    """Issue 13's interface on vLLM: ``vllm serve TARGET --speculative-model DRAFT`` with drafted top-K rounds
    (``padrec.topk_draft_beams`` 3) answers ``"verification": "strict"`` with the reference's items, scores and
    order, ``"relaxed"`` with K distinct catalog items, refuses an unknown rule with a 4xx naming the field,
    and keeps serving (no engine death)."""
    from vllm_padrec.testing.server import VllmServer, engine_deaths
    from vllm_padrec.topk.offline import topk_engine_args

    cat, k = setup["catalog"], 5
    draft = build_random_draft(tmp_path / "draft", setup["model"], cat)
    sized = topk_engine_args(k, 2, draft=str(draft), draft_beams=3, gamma=DRAFT_GAMMA)
    args = ["--dtype", "float32", "--max-model-len", "256", "--gpu-memory-utilization", "0.15"]
    args += ["--max-num-seqs", str(sized["max_num_seqs"])]
    args += ["--max-num-batched-tokens", str(sized["max_num_batched_tokens"])]
    args += ["--speculative-model", str(draft), "--num-speculative-tokens", str(DRAFT_GAMMA)]
    args += ["--attention-backend", "TRITON_ATTN", "--additional-config", json.dumps(sized["additional_config"])]
    want = reference(setup, k, False)
    with VllmServer(setup["target"], args, port=8042, log_path=tmp_path / "serve.log", env=TOPK_ENV) as server:
        for user, history in enumerate(setup["users"][:2]):
            body = {"history": [cat.item_ids[i] for i in history], "mode": "topk", "k": k, "verification": "strict"}
            answer = server.post_json("/v1/recommendations", body)
            assert [item["item_id"] for item in answer["items"]] == [cat.item_ids[i] for i, _ in want[user]]
            scores = [item["score"] for item in answer["items"]]
            assert np.allclose(scores, [s for _, s in want[user]], rtol=0, atol=SCORE_TOLERANCE)
            relaxed = server.post_json("/v1/recommendations", {**body, "verification": "relaxed"})
            items = [item["item_id"] for item in relaxed["items"]]
            assert len(set(items)) == k and set(items) <= set(cat.item_ids), items
        history = [cat.item_ids[i] for i in setup["users"][0]]
        bad = json.dumps({"history": history, "mode": "topk", "k": k, "verification": "fast"})
        status, answer, _ = server.post("/v1/recommendations", bad)
        assert 400 <= status < 500 and "verification" in json.dumps(answer), (status, answer)
        assert server.healthy() and engine_deaths(server.log_text()) == 0


WIDE_K = 256


def test_k_256_on_a_catalog_of_300_items(tmp_path):
    from vllm_padrec.data import SyntheticConfig, generate_synthetic
    from vllm_padrec.decoding import beam_search_items

    cat = generate_synthetic(SyntheticConfig(num_items=300, num_users=4, codebook_sizes=(8, 8, 8))).catalog
    target, model = build_target(tmp_path / "target", cat)
    rng = np.random.default_rng(5)
    users = [rng.choice(len(cat), 4, replace=False).tolist() for _ in range(2)]
    got = in_subprocess(str(target), users, WIDE_K, function=run_wide_topk)
    want = beam_search_items(model.to("cuda").eval(), cat, users, WIDE_K, batch_size=1)
    assert [[i for i, _ in u] for u in got] == [[i for i, _ in u] for u in want]
    for ours, theirs in zip(got, want):
        assert len(ours) == WIDE_K and np.allclose([s for _, s in ours], [s for _, s in theirs], atol=SCORE_TOLERANCE)
