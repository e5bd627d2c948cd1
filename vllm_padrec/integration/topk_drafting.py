"""Whether and how a server drafts its top-K requests' beams (issue 13, ``topk/ATSPEED.md``): read once from
its settings and its speculative config, for the scheduler (admission rows), the runner (the beams' layout)
and the front end (which ``padrec_topk_verification`` rules it accepts).

    additional_config["padrec"]["topk_draft_beams"]   N: the draft's beams in a round; 0 (the default): top-K
                                                      runs undrafted, and a server with a draft then refuses it

With N > 0 every top-K request runs in drafted rounds: its rows carry gamma = ``num_speculative_tokens`` draft
tokens each, and it holds ``admission.beam_rows(K, N, gamma)`` = K + (N - 1) * gamma runner rows, so a server's
``topk_max_beams`` must hold ``max_topk`` + (N - 1) * gamma.

What is built decides what is served (ATSPEED.md, plan step 7): N = 1, each beam's row carrying vLLM's own
greedy draft chain (an EAGLE-family V2 speculator, PAD-Rec's included), verified by the strict rule, which
stays exact over any drafted tree. N > 1 needs the draft's beam search inside ``propose`` (plan step 4), and
relaxed verification needs the draft's log-probs that search keeps: both are refused until it exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vllm_padrec.errors import PadRecError
from vllm_padrec.integration.list_settings import ListSettings
from vllm_padrec.lists.spec import VERIFICATION_RULES
from vllm_padrec.topk.admission import beam_rows

SETTING = "topk_draft_beams"  # ListSettings.topk_draft_beams
BUILT_DRAFT_BEAMS = 1  # the largest N served: the draft beam search in propose (N > 1) is not built
STRICT = VERIFICATION_RULES[0]


@dataclass(frozen=True)
class TopKDrafting:
    """A server's drafted top-K rounds: N draft beams, gamma draft tokens per row, the rules it verifies by."""

    draft_beams: int  # N
    gamma: int  # draft tokens each row carries into a round (the speculative config's num_speculative_tokens)
    rules: tuple[str, ...]  # the padrec_topk_verification values served (VERIFICATION_RULES' order)

    def rows(self, k: int) -> int:
        """The runner rows a request of K beams holds (``admission.beam_rows``)."""
        return beam_rows(k, self.draft_beams, self.gamma)


def topk_drafting(vllm_config: Any, settings: ListSettings) -> TopKDrafting | None:
    """The server's drafted top-K rounds, None when its top-K runs undrafted (or it serves no top-K).

    Raises ``PadRecError`` naming the setting for a server that cannot run them as configured; the scheduler
    calls it at start-up, so such a server does not start, and the front end and the runner then read the
    same answer."""
    spec = getattr(vllm_config, "speculative_config", None)
    draft_beams = settings.topk_draft_beams
    if not settings.topk_on:
        return None
    if draft_beams == 0:
        if spec is not None:
            raise PadRecError(
                f"top-K beside a speculative model (method {getattr(spec, 'method', None)!r}) runs in drafted "
                f"rounds: set padrec.{SETTING} to {BUILT_DRAFT_BEAMS}, or serve top-K without --speculative-model"
            )
        return None
    if spec is None or not spec.use_eagle():
        method = None if spec is None else spec.method
        raise PadRecError(
            f"padrec.{SETTING}={draft_beams} needs an EAGLE-family draft (--speculative-config method eagle, "
            f"eagle3 or a PAD-Rec head), got {'no draft' if spec is None else f'method {method!r}'}"
        )
    if draft_beams > BUILT_DRAFT_BEAMS:
        raise PadRecError(
            f"padrec.{SETTING}={draft_beams}: the draft's beam search inside vLLM (N > {BUILT_DRAFT_BEAMS}) is not "
            f"built yet; set it to {BUILT_DRAFT_BEAMS} (each beam's row carries the draft's greedy chain)"
        )
    if spec.num_speculative_tokens_per_batch_size:
        raise PadRecError(
            f"padrec.{SETTING} with num_speculative_tokens_per_batch_size: every drafted round carries the same "
            "gamma drafts per row; drop the table or set padrec.topk_draft_beams to 0 and serve no top-K"
        )
    drafting = TopKDrafting(draft_beams, int(spec.num_speculative_tokens), (STRICT,))
    needed = drafting.rows(settings.max_topk)
    if needed > settings.topk_max_beams:
        raise PadRecError(
            f"padrec.topk_max_beams={settings.topk_max_beams} is less than the {needed} rows a request of "
            f"K = padrec.max_topk ({settings.max_topk}) holds in drafted rounds (K + (N - 1) * gamma, N = "
            f"{draft_beams}, gamma = {drafting.gamma}): raise padrec.topk_max_beams or lower padrec.max_topk"
        )
    return drafting
