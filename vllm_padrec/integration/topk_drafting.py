"""Whether and how a server drafts its top-K requests' beams (issue 13, ``topk/ATSPEED.md``): read once from
its settings and its speculative config, for the scheduler (admission rows), the runner (the beams' layout)
and the front end (which ``padrec_topk_verification`` rules it accepts).

    additional_config["padrec"]["topk_draft_beams"]   N: the draft's beams in a round; 0 (the default): top-K
                                                      runs undrafted, and a server with a draft then refuses it

With N > 0 every top-K request runs in drafted rounds: its rows carry gamma = ``num_speculative_tokens`` draft
tokens each, and it holds ``admission.beam_rows(K, N, gamma)`` = K + (N - 1) * gamma runner rows, so a server's
``topk_max_beams`` must hold ``max_topk`` + (N - 1) * gamma.

N = 1: each beam's row carries vLLM's own greedy draft chain (any EAGLE-family V2 speculator), verified by the
strict rule, which stays exact over any drafted tree. N > 1: the draft's own beam search runs on the rows inside
``propose`` (``speculator.PadRecSpeculator``, the plugin's speculator for every EAGLE-family draft it masks),
which also keeps the draft's log-probs that relaxed verification reads, so both rules are served. Neither has
run in vLLM yet (ATSPEED.md, plan step 7); both are exact or valid on the CPU tests' stand-in of V2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vllm_padrec.errors import PadRecError
from vllm_padrec.integration.list_settings import ListSettings
from vllm_padrec.lists.spec import VERIFICATION_RULES
from vllm_padrec.topk.admission import beam_rows

SETTING = "topk_draft_beams"  # ListSettings.topk_draft_beams
GREEDY_CHAINS = 1  # N = 1: V2's own greedy chains, verified by the strict rule only (no draft log-probs kept)
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
                f"rounds: set padrec.{SETTING} (1, or N > 1 for the draft's own beam search), or serve top-K without "
                "--speculative-model"
            )
        return None
    if spec is None or not spec.use_eagle():
        method = None if spec is None else spec.method
        raise PadRecError(
            f"padrec.{SETTING}={draft_beams} needs an EAGLE-family draft (--speculative-config method eagle, "
            f"eagle3 or a PAD-Rec head), got {'no draft' if spec is None else f'method {method!r}'}"
        )
    if spec.num_speculative_tokens_per_batch_size:
        raise PadRecError(
            f"padrec.{SETTING} with num_speculative_tokens_per_batch_size: every drafted round carries the same "
            "gamma drafts per row; drop the table or set padrec.topk_draft_beams to 0 and serve no top-K"
        )
    rules = (STRICT,) if draft_beams == GREEDY_CHAINS else VERIFICATION_RULES
    drafting = TopKDrafting(draft_beams, int(spec.num_speculative_tokens), tuple(rules))
    needed = drafting.rows(settings.max_topk)
    if needed > settings.topk_max_beams:
        raise PadRecError(
            f"padrec.topk_max_beams={settings.topk_max_beams} is less than the {needed} rows a request of "
            f"K = padrec.max_topk ({settings.max_topk}) holds in drafted rounds (K + (N - 1) * gamma, N = "
            f"{draft_beams}, gamma = {drafting.gamma}): raise padrec.topk_max_beams or lower padrec.max_topk"
        )
    return drafting
