"""Patch: ``vllm.engine.arg_utils.EngineArgs.add_cli_args`` (vLLM 0.26.0) for ``--speculative-model``.

    vllm serve TARGET --speculative-model DRAFT [--spec-tokens K | --num-speculative-tokens K]

What: the wrapper adds ``--speculative-model DRAFT`` (and ``--num-speculative-tokens``, an alias of
vLLM's ``--spec-tokens``) to every parser vLLM builds from ``EngineArgs``, and folds the flag into
``--speculative-config`` right after parsing: ``{"method": "eagle", "model": DRAFT,
"num_speculative_tokens": n_predict of DRAFT/config.json}``. Keys given by ``--speculative-config``,
``--spec-method``, ``--spec-model`` or ``--spec-tokens`` win (vLLM merges those later, so the fold
leaves them out); a contradicting method or model is an error, and so is a number of speculative tokens vLLM
would refuse for the draft (``draft_check.speculative_tokens_problem``), said in one line before vLLM's
validation traceback. A PAD-Rec draft is checked against the
target and the catalog the server's masks will read (``draft_check``: ``padrec.catalog`` of
``--additional-config``, else the target folder's), before anything is loaded.

Why: vLLM has no ``--speculative-model`` and plugins get no parser object; parsed options reach
``EngineArgs`` only through its dataclass fields (``from_cli_args``), so the value is folded into the
``speculative_config`` field. The fold runs after parsing (a wrapper of this parser's
``parse_known_args``) so that the order of the flags does not matter.

How: wraps the static method when ``vllm.engine.arg_utils`` is imported (at ``register()``: vLLM calls
it from there); on each parser it builds, it reads argparse's ``_option_string_actions`` (so that a
flag is added once) and replaces that parser instance's ``parse_known_args``. Idempotent.

Unnecessary when: vLLM lets plugins add engine flags, or ``--spec-model`` reads the method and
``n_predict`` from the draft's config (vLLM already defaults ``num_speculative_tokens`` to
``n_predict`` once the method is "eagle").

``--speculative-config '{...}'`` and offline ``LLM(..., speculative_config={...})`` are untouched.
"""

from __future__ import annotations

import argparse
from types import ModuleType

from vllm_padrec.integration.patches.marking import is_patched, mark_patched

TARGETS = ("vllm.engine.arg_utils",)
FLAG = "--speculative-model"
DEST = "padrec_speculative_model"  # not an EngineArgs field: EngineArgs.from_cli_args drops it
METHOD = "eagle"  # PAD-Rec drafts run as vLLM EAGLE heads (`method` is a closed Literal in vLLM)


def fold_speculative_model(args: argparse.Namespace) -> None:
    """Fold ``args.padrec_speculative_model`` into ``args.speculative_config`` (module docstring)."""
    draft = getattr(args, DEST, None)
    if not draft:
        return
    from vllm_padrec.integration.draft_check import (
        catalog_codebook_sizes,
        check_draft_matches_target,
        is_padrec_draft,
        read_json_config,
        served_catalog_of_args,
        speculative_tokens_problem,
    )

    config = dict(getattr(args, "speculative_config", None) or {})
    spec_method = getattr(args, "spec_method", None)
    spec_model = getattr(args, "spec_model", None)
    for given, where in ((config.get("model"), "--speculative-config's model"), (spec_model, "--spec-model")):
        if given is not None and given != draft:
            raise ValueError(f"{FLAG} {draft} contradicts {where} {given}: give the draft once")
    for given, where in ((config.get("method"), "--speculative-config's method"), (spec_method, "--spec-method")):
        if given is not None and given != METHOD:
            raise ValueError(f"{FLAG} serves the draft with method {METHOD!r}, but {where} is {given!r}")
    if spec_method is None:
        config["method"] = METHOD
    if spec_model is None:
        config["model"] = draft
    draft_json = read_json_config(draft)  # None for a hub id: vLLM resolves it (and n_predict) itself
    tokens_given = "num_speculative_tokens" in config or getattr(args, "spec_tokens", None) is not None
    if draft_json is not None and not tokens_given and draft_json.get("n_predict") is not None:
        config["num_speculative_tokens"] = int(draft_json["n_predict"])
    tokens = config.get("num_speculative_tokens", getattr(args, "spec_tokens", None))
    if draft_json is not None and tokens is not None:
        problem = speculative_tokens_problem(int(tokens), draft_json.get("n_predict"))
        if problem is not None:  # vLLM's own refusal comes later, as a validation traceback
            raise ValueError(f"{FLAG} {draft}: {problem}")
    target = getattr(args, "model_tag", None) or getattr(args, "model", None)
    target_json = read_json_config(target) if target else None
    if draft_json is not None and target_json is not None and is_padrec_draft(draft_json):
        check_draft_matches_target(
            draft_json,
            target_json,
            catalog_codebook_sizes(served_catalog_of_args(target, getattr(args, "additional_config", None))),
            draft_name=f"the draft {draft}",
            target_name=f"the target {target}",
        )
    args.speculative_config = config


def add_speculative_model_flag(parser: argparse.ArgumentParser) -> None:
    """Add the flags to ``parser`` and fold them after each parse (idempotent per parser)."""
    if FLAG in parser._option_string_actions:
        return
    parser.add_argument(
        FLAG,
        dest=DEST,
        default=None,
        metavar="DRAFT",
        help="Draft head folder (PAD-Rec or EAGLE) served with method 'eagle'; the number of speculative "
        "tokens defaults to the draft's n_predict. Shorthand for --speculative-config "
        '\'{"method": "eagle", "model": DRAFT, "num_speculative_tokens": n_predict}\'. (vllm-padrec)',
    )
    if "--num-speculative-tokens" not in parser._option_string_actions:
        parser.add_argument(
            "--num-speculative-tokens",
            dest="spec_tokens",
            type=int,
            default=None,
            help="Alias of --spec-tokens. (vllm-padrec)",
        )
    parse_known_args = parser.parse_known_args

    def parse_known_args_and_fold(args=None, namespace=None):
        namespace, rest = parse_known_args(args, namespace)
        fold_speculative_model(namespace)
        return namespace, rest

    parser.parse_known_args = parse_known_args_and_fold


def apply(module: ModuleType) -> None:
    """Wrap ``EngineArgs.add_cli_args`` (idempotent)."""
    EngineArgs = module.EngineArgs
    original = EngineArgs.add_cli_args
    if is_patched(original):
        return

    def add_cli_args(parser):
        parser = original(parser)
        add_speculative_model_flag(parser)
        return parser

    mark_patched(add_cli_args, original)
    EngineArgs.add_cli_args = staticmethod(add_cli_args)
