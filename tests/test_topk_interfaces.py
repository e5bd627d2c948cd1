"""The top-K interfaces beyond the route (design step 7, test plan 7.5): the offline ``recommend_topk`` over a
fake ``vllm.LLM`` and the ``vllm-padrec topk`` command on a tiny untrained target. The route's own tests are in
test_integration_endpoint.py."""

from __future__ import annotations

import argparse
import re
from types import SimpleNamespace

import pytest
import torch
from test_integration_endpoint import CATALOG, write_model_folder  # the 8-item catalog

from vllm_padrec import cli
from vllm_padrec.catalog import TokenLayout
from vllm_padrec.data import generate_synthetic
from vllm_padrec.errors import PadRecError
from vllm_padrec.lists import REQUEST_KEYS, ListSpecError
from vllm_padrec.target import model as target_model
from vllm_padrec.target.config import get_recipe
from vllm_padrec.target.model import build_model, save_checkpoint
from vllm_padrec.target.tokenizer import build_tokenizer
from vllm_padrec.topk.offline import recommend_topk
from vllm_padrec.topk.request import RankedItems, ranked_items, topk_max_tokens
from vllm_padrec.topk.result import encode_items
from vllm_padrec.topk.select import TopKItems


class FakeLLM:
    """``vllm.LLM`` as ``recommend_topk`` uses it: ``llm_engine.vllm_config``, ``enqueue`` and
    ``wait_for_completion``. Each request is answered, as the engine's top-K path would, with the catalog's
    items in ``preference`` order that its ``padrec_exclude_items`` leave, the first K, scored -1, -2, ...;
    ``wait_for_completion`` also returns a request someone else queued on the same LLM. As in vLLM 0.26.0,
    ``enqueue`` returns the engine's internal ids (``InputProcessor.assign_request_id``: the counter's id, a
    dash and 8 random characters) while the outputs carry the counter's (external) id."""

    def __init__(self, folder, preference, catalog=CATALOG, **settings):
        settings = {"topk_max_beams": 256, **settings}  # as topk_engine_args builds it: beam rows held
        self.llm_engine = SimpleNamespace(
            vllm_config=SimpleNamespace(
                model_config=SimpleNamespace(model=str(folder)), additional_config={"padrec": settings}
            )
        )
        self.preference = list(preference)
        self.catalog = catalog
        self.queued: list[tuple] = []  # every request ever queued
        self.pending: list[tuple] = []  # those the next wait_for_completion answers
        self.counter = 7
        self.preempt: dict[tuple[int, ...], int] = {}  # prompt token ids -> times vLLM preempts that request

    def enqueue(self, prompts, params, use_tqdm=True):
        ids = [str(self.counter + n) for n in range(len(prompts))]
        self.counter += len(prompts)
        self.queued += list(zip(ids, prompts, params))
        self.pending += list(zip(ids, prompts, params))
        return [f"{i}-{n:08x}" for n, i in enumerate(ids)]

    def wait_for_completion(self, output_type, use_tqdm=True):
        from vllm.outputs import CompletionOutput, PoolingOutput, PoolingRequestOutput, RequestOutput

        outputs = []
        pending, self.pending = self.pending, []
        for request_id, prompt, params in pending:
            key = tuple(prompt["prompt_token_ids"])
            if self.preempt.get(key, 0) > 0:  # preempted: the runner ends it with </s> and no answer
                self.preempt[key] -= 1
                eos = CompletionOutput(0, "", [TokenLayout.EOS], None, None, finish_reason="stop")
                outputs.append(RequestOutput(request_id, None, list(key), None, [eos], finished=True))
                continue
            excluded = set(params.extra_args.get(REQUEST_KEYS["exclude_items"], ()))
            items = [i for i in self.preference if i not in excluded][: params.extra_args["padrec_topk"]]
            scores = -torch.arange(1, len(items) + 1, dtype=torch.float32)  # [n]
            answer = TopKItems(
                torch.tensor([self.catalog.item_token_ids(i) for i in items]),
                scores,
                torch.zeros(len(items), self.catalog.num_slots),
            )
            outputs.append(PoolingRequestOutput(request_id, PoolingOutput(encode_items(answer)), [], 0, True))
        other = TopKItems(torch.tensor([CATALOG.item_token_ids(0)]), torch.zeros(1), torch.zeros(1, 2))
        outputs.append(PoolingRequestOutput("3", PoolingOutput(encode_items(other)), [], 0, True))
        assert all(isinstance(o, output_type) for o in outputs)
        return outputs


@pytest.fixture
def folder(tmp_path):
    return write_model_folder(tmp_path / "target")


def test_an_answer_reads_back_as_items_best_first_without_dead_beams_counting_rows_of_no_item():
    from vllm.outputs import PoolingOutput, PoolingRequestOutput

    swapped = CATALOG.item_token_ids(2)[::-1]  # codes in the wrong slots
    rows = [CATALOG.item_token_ids(5), swapped, CATALOG.item_token_ids(1), CATALOG.item_token_ids(0)]
    answer = TopKItems(
        torch.tensor(rows), torch.tensor([-0.5, -1.0, -2.0, float("-inf")]), torch.zeros(4, CATALOG.num_slots)
    )
    output = PoolingRequestOutput("r", PoolingOutput(encode_items(answer)), [], 0, True)
    assert ranked_items(output, CATALOG) == RankedItems([(5, -0.5), (1, -2.0)], invalid=1)


def test_offline_topk_on_an_llm_without_beam_rows_is_refused_like_the_front_end(folder):
    llm = FakeLLM(folder, range(8), topk_max_beams=0)
    with pytest.raises(ListSpecError, match=r"padrec\.topk_max_beams is 0") as refused:
        recommend_topk(llm, CATALOG, [[1, 3]], k=3)
    assert refused.value.key == "padrec_topk" and llm.queued == []


def test_offline_topk_returns_each_users_items_best_first(folder):
    from vllm.sampling_params import RequestOutputKind

    llm = FakeLLM(folder, [4, 1, 0, 3, 2, 7, 6, 5])
    ranked = recommend_topk(llm, CATALOG, [[1, 3], [5]], k=3)
    assert ranked == [[(4, -1.0), (1, -2.0), (0, -3.0)], [(4, -1.0), (1, -2.0), (0, -3.0)]]
    (_, prompt, params), (_, prompt2, _) = llm.queued
    assert prompt == {"prompt_token_ids": CATALOG.render_prompt([1, 3])}
    assert prompt2 == {"prompt_token_ids": CATALOG.render_prompt([5])}
    assert params.extra_args == {
        "padrec_constraint": True,
        "padrec_num_items": 1,
        "padrec_no_repeat": False,
        "padrec_topk": 3,
    }
    assert params.max_tokens == topk_max_tokens(CATALOG.num_slots) == 2 and params.temperature == 0.0
    assert params.stop_token_ids == [TokenLayout.EOS] and params.output_kind == RequestOutputKind.FINAL_ONLY
    assert params.detokenize is False


def test_offline_topk_excludes_each_users_history(folder):
    llm = FakeLLM(folder, [4, 1, 0, 3, 2, 7, 6, 5])
    ranked = recommend_topk(llm, CATALOG, [[1, 4, 1], [5]], k=2, exclude_history=True)
    assert ranked == [[(0, -1.0), (3, -2.0)], [(4, -1.0), (1, -2.0)]]
    assert [p.extra_args[REQUEST_KEYS["exclude_items"]] for _, _, p in llm.queued] == [[1, 4], [5]]


def test_offline_topk_sends_preempted_requests_again_once(folder):
    llm = FakeLLM(folder, [4, 1, 0, 3, 2, 7, 6, 5])
    llm.preempt[tuple(CATALOG.render_prompt([5]))] = 1
    ranked = recommend_topk(llm, CATALOG, [[1, 3], [5]], k=2)
    assert ranked == [[(4, -1.0), (1, -2.0)], [(4, -1.0), (1, -2.0)]]
    assert [p["prompt_token_ids"] for _, p, _ in llm.queued] == [CATALOG.render_prompt(h) for h in ([1, 3], [5], [5])]
    llm.preempt[tuple(CATALOG.render_prompt([5]))] = 2
    with pytest.raises(PadRecError, match="1 top-K requests were preempted 2 times"):
        recommend_topk(llm, CATALOG, [[1, 3], [5]], k=2)


def test_offline_topk_refuses_k_beyond_the_limits_before_queueing_any(folder):
    llm = FakeLLM(folder, range(8), max_topk=4)
    with pytest.raises(ListSpecError, match="in 1..4"):
        recommend_topk(llm, CATALOG, [[1]], k=5)
    with pytest.raises(ListSpecError, match="leaves 6 of the catalog's 8 items, fewer than the 7 asked"):
        recommend_topk(FakeLLM(folder, range(8)), CATALOG, [[0], [1, 2]], k=7, exclude_history=True)
    assert llm.queued == []


def test_topk_engine_args_hold_beam_rows_for_every_user_and_room_for_the_requests():
    from vllm_padrec.topk.offline import topk_engine_args

    args = topk_engine_args(max_k=20, concurrent_users=64)
    assert args["additional_config"] == {"padrec": {"max_topk": 20, "topk_max_beams": 1280}}
    # the scheduler keeps max_num_seqs - 1280 slots and max_num_batched_tokens - 1280 tokens for the requests
    assert args["max_num_seqs"] == 1280 + 64 and args["max_num_batched_tokens"] == 1280 + 8192
    assert topk_engine_args(1, 4, max_num_seqs=1024)["max_num_seqs"] == 1024
    with pytest.raises(PadRecError, match="need 65600 beam rows, more than 65536"):
        topk_engine_args(max_k=100, concurrent_users=656)


def test_topk_engine_args_with_a_draft_run_drafted_rounds_with_token_rows_for_every_draft():
    from types import SimpleNamespace

    from vllm_padrec.integration.list_settings import ListSettings
    from vllm_padrec.integration.topk_drafting import TopKDrafting, topk_drafting
    from vllm_padrec.topk.offline import topk_engine_args

    args = topk_engine_args(max_k=20, concurrent_users=64, draft="/heads/padrec", gamma=3)
    assert args["speculative_config"] == {"method": "eagle", "model": "/heads/padrec", "num_speculative_tokens": 3}
    assert args["additional_config"] == {"padrec": {"max_topk": 20, "topk_max_beams": 1280, "topk_draft_beams": 1}}
    # the scheduler holds back 1280 rows of 1 + 3 tokens; the 64 requests keep 1 + 3 tokens each and the prefill
    assert args["max_num_batched_tokens"] - 1280 * 4 == 64 * 3 + 8192 and args["max_num_seqs"] == 1280 + 64
    spec = SimpleNamespace(method="eagle", use_eagle=lambda: True, num_speculative_tokens_per_batch_size=None)
    spec.num_speculative_tokens = args["speculative_config"]["num_speculative_tokens"]
    settings = ListSettings.from_additional_config(args["additional_config"])
    assert topk_drafting(SimpleNamespace(speculative_config=spec), settings) == TopKDrafting(1, 3, ("strict",))
    # N draft beams add (N - 1) * gamma rows per user
    assert topk_engine_args(20, 2, draft="/d", draft_beams=3, gamma=2)["additional_config"]["padrec"][
        "topk_max_beams"
    ] == 2 * (20 + 2 * 2)
    assert "compilation_config" not in args  # one request's round: (20 + 1) * 4 tokens, within vLLM's 512


def test_topk_engine_args_raise_the_cuda_graph_limit_to_hold_one_drafted_request():
    """K = 20, N = 40, gamma 3 (the must-show's): 137 rows and the request, 4 tokens each, 552 tokens a step
    for one request, past vLLM's default 512: captured up to 560 (vLLM's step of 16 from 256 on)."""
    from vllm_padrec.topk.offline import one_round_graph_size, topk_engine_args

    args = topk_engine_args(max_k=20, concurrent_users=1, draft="/d", draft_beams=40, gamma=3)
    assert args["additional_config"]["padrec"]["topk_max_beams"] == 137
    assert args["compilation_config"] == {"max_cudagraph_capture_size": 560}
    assert args["max_num_batched_tokens"] >= 560
    assert one_round_graph_size(20, 20, 3) == 320 and "compilation_config" not in topk_engine_args(
        20, 64, draft="/d", draft_beams=20, gamma=3
    )


# -- the CLI ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """An untrained tiny target on the synthetic default catalog (what ``--dataset synthetic`` loads)."""
    catalog = generate_synthetic().catalog
    recipe = get_recipe("tiny", max_position_embeddings=512)
    torch.manual_seed(0)
    model = build_model(recipe, catalog.layout)
    return save_checkpoint(model, build_tokenizer(catalog.layout), catalog, recipe, tmp_path_factory.mktemp("t") / "c")


def run(capsys, argv):
    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.usefixtures("keep_torch_threads")
@pytest.mark.parametrize("exclude", [False, True])
def test_cli_topk_prints_the_references_items_and_scores_and_metrics(capsys, target, exclude):
    import json

    from vllm_padrec.data import open_dataset
    from vllm_padrec.decoding import beam_search_items
    from vllm_padrec.target.evaluate import recall_ndcg
    from vllm_padrec.target.model import load_checkpoint

    argv = ["topk", "--target", str(target), "--dataset", "synthetic", "--k", "4", "--users", "2", "--device", "cpu"]
    code, out, err = run(capsys, argv + (["--exclude-history"] if exclude else []))
    assert code == 0, err
    data = open_dataset("synthetic")
    ckpt = load_checkpoint(target, device="cpu")
    samples = data.eval_samples("test", ckpt.recipe.max_history)[:2]
    histories = [s.history for s in samples]
    reference = beam_search_items(ckpt.model, ckpt.catalog, histories, 4, ban_history=exclude)
    printed = re.findall(r"^\s+(\d+)\. (\S+)  .*  (-?\d+\.\d{4})$", out, re.M)  # rank, semantic id, score
    expected = [(str(r), ckpt.catalog.sid_string(i), f"{s:.4f}") for u in reference for r, (i, s) in enumerate(u, 1)]
    assert printed == expected and len(printed) == 8
    if exclude:
        assert not any(i in h for u, h in zip(reference, histories) for i, _ in u)
    metrics = json.loads(out[out.rindex("\n{") :])
    scored = recall_ndcg([[i for i, _ in u] for u in reference], [s.targets for s in samples], 4)
    assert metrics == {"k": 4, "exclude_history": exclude, **scored}


def test_cli_topk_mistakes_are_one_line_before_any_model_loads(capsys, target, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(target_model, "load_checkpoint", fail)
    cases = [
        (["--k", "0"], "argument --k: must be an integer >= 1, got '0'"),
        (["--k", "401"], "--k 401 needs 401 distinct items"),
        (["--k", "4", "--users", "0"], "argument --users"),
    ]
    for extra, fragment in cases:
        code, _, err = run(capsys, ["topk", "--target", str(target), "--dataset", "synthetic", *extra])
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("vllm-padrec topk: error: "), err
        assert fragment in lines[0], lines[0]
    code, _, err = run(capsys, ["topk", "--dataset", "synthetic", "--k", "4"])
    assert code == 2 and "the following arguments are required: --target" in err
    (target.parent / "nocat").mkdir()
    code, _, err = run(capsys, ["topk", "--target", str(target.parent / "nocat"), "--dataset", "synthetic", "--k", "4"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not a target checkpoint folder" in err


def test_cli_topk_has_help_for_every_option():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    options = {o for action in commands["topk"]._actions for o in action.option_strings}
    assert {"--target", "--dataset", "--k", "--users", "--exclude-history", "--device"} <= options
    for action in commands["topk"]._actions:
        if not isinstance(action, argparse._HelpAction):
            assert action.help and action.help.strip(), f"topk {action.option_strings} has no help"


@pytest.mark.usefixtures("keep_torch_threads")
def test_cli_topk_exclude_history_leaves_out_every_history_item(capsys, target):
    """K = the whole catalog: every item but the history's comes back, so a history item would show."""
    from vllm_padrec.data import open_dataset

    argv = ["topk", "--target", str(target), "--dataset", "synthetic", "--k", "400", "--users", "1"]
    code, out, err = run(capsys, [*argv, "--device", "cpu", "--exclude-history"])
    assert code == 0, err
    catalog = open_dataset("synthetic").catalog
    (sample,) = open_dataset("synthetic").eval_samples("test", get_recipe("tiny").max_history)[:1]
    printed = re.findall(r"^\s+\d+\. (\S+)  .*  -?\d+\.\d{4}$", out, re.M)
    assert sorted(printed) == sorted(catalog.sid_string(i) for i in range(400) if i not in set(sample.history))


@pytest.mark.parametrize("exclude", [False, True])
def test_cli_topk_with_the_vllm_engine_prints_the_engines_answers(capsys, target, monkeypatch, exclude):
    import vllm

    from vllm_padrec.catalog import ItemCatalog
    from vllm_padrec.data import open_dataset
    from vllm_padrec.integration.recommendation_service import read_max_history

    catalog = ItemCatalog.load(target)
    samples = open_dataset("synthetic").eval_samples("test", read_max_history(target))[:2]  # the CLI's users
    first = [samples[0].history[0], samples[1].history[0]]  # history items ranked first: exclusion must show
    preference = first + [i for i in reversed(range(len(catalog))) if i not in first]
    made = []

    def fake_llm(**kwargs):
        made.append(kwargs)
        return FakeLLM(kwargs["model"], preference, catalog=catalog, **kwargs["additional_config"]["padrec"])

    monkeypatch.setattr(vllm, "LLM", fake_llm)
    argv = ["topk", "--target", str(target), "--dataset", "synthetic", "--k", "3", "--users", "2", "--engine", "vllm"]
    code, out, err = run(capsys, argv + (["--exclude-history"] if exclude else []))
    assert code == 0, err
    assert made[0]["additional_config"] == {"padrec": {"max_topk": 3, "topk_max_beams": 6}}
    printed = re.findall(r"^\s+(\d+)\. (\S+)  ", out, re.M)
    expected = []
    for sample in samples:
        left = [i for i in preference if not (exclude and i in sample.history)][:3]
        expected += [(str(rank), catalog.sid_string(i)) for rank, i in enumerate(left, 1)]
    assert printed == expected
