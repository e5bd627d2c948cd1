"""What the plugin answers on a worker through vLLM's ``collective_rpc``: methods mixed into vLLM's worker by its
supported hook ``worker_extension_cls`` (``LLM(..., worker_extension_cls=WORKER_RPC)``, ``vllm serve
--worker-extension-cls``; vllm/v1/worker/worker_base.py:261-287 adds the class to the worker's bases), so that
a caller reaches the engine's speculator by name (``llm.collective_rpc("padrec_decode_loop_graph")``) without
shipping a pickled function to the engine core.

Used by ``bench_spec_decode``: ``padrec_loop`` switches ``padrec.decode_loop_graph`` between calls of one engine,
which times the graph against vLLM's loop without the spread between two engines, and ``--rivals`` counts each draft
engine's acceptance over the calls it compares (``padrec_acceptance``; a second engine in a process has no vLLM
counters, ``acceptance_tally.py``). The methods' names start with ``padrec_``: vLLM refuses an extension whose names
the worker already has.

``vllm serve --worker-extension-cls`` answers the same methods on vLLM's development endpoint (``POST
/collective_rpc`` with ``{"method": "padrec_decode_loop_graph", "args": ["false"]}``, only with
``VLLM_SERVER_DEV_MODE=1``; vllm/entrypoints/serve/dev/rpc/api_router.py), which passes every argument as a string:
so the switch also takes ``"true"`` and ``"false"``. Anything else raises TypeError in the worker, which fails that
call alone: vLLM's engine core returns the error to the caller and keeps serving (vllm/v1/engine/core.py:1534-1550).
"""

from __future__ import annotations

WORKER_RPC = "vllm_padrec.integration.worker_rpc.PadRecWorkerRpc"  # the qualified name vLLM resolves
SWITCH_WORDS = {"true": True, "false": False}  # the switch as vLLM's development endpoint sends it (a string)


class PadRecWorkerRpc:
    """Mixed into vLLM's GPU worker (``self`` is the worker: ``self.model_runner`` is its model runner)."""

    def padrec_decode_loop_graph(self, enabled: bool | None = None) -> dict | None:
        """``padrec.decode_loop_graph`` on this worker: ``{"graphs", "replays", "enabled"}`` (loop graphs
        captured, rounds they served, whether later rounds replay them), or None where none were captured.
        Given ``enabled``, it switches before it reports: later rounds replay the graphs (True or ``"true"``) or
        run vLLM's loop (False or ``"false"``)."""
        enabled = switch_value("padrec_decode_loop_graph", "enabled", enabled)
        graphs = getattr(padrec_speculator(self), "_loop_graphs", None)
        if graphs is None:
            return None
        if enabled is not None:
            graphs.enabled = enabled
        return {"graphs": len(graphs.graphs), "replays": graphs.replays, "enabled": graphs.enabled}

    def padrec_acceptance(self, count: bool | None = None) -> dict | None:
        """This engine's drafts verified and accepted (``acceptance_tally.py``): ``count`` True (or ``"true"``)
        counts from zero, False (or ``"false"``) reports the counts and stops, None reports them; the counts are
        ``{"rounds", "draft_tokens", "accepted", "per_pos"}``, or None while not counting or where the engine
        has no PAD-Rec speculator (no draft, or vLLM's own)."""
        count = switch_value("padrec_acceptance", "count", count)
        speculator = padrec_speculator(self)
        if not hasattr(speculator, "acceptance_tally"):
            return None
        tally = speculator.acceptance_tally()
        if count:
            tally.start(speculator.device)
        counts = tally.read()
        if count is False:
            tally.stop()
        return counts


def padrec_speculator(worker):
    """The worker's speculator (a ``PadRecSpeculator`` where the plugin serves the draft), or None."""
    return getattr(getattr(worker, "model_runner", None), "speculator", None)


def switch_value(method: str, name: str, value):
    """A switch as Python or vLLM's development endpoint passes it: True, False, None, ``"true"`` or ``"false"``;
    anything else is a TypeError naming ``method``'s argument."""
    if isinstance(value, str) and value.lower() in SWITCH_WORDS:
        return SWITCH_WORDS[value.lower()]
    if value is not None and not isinstance(value, bool):
        raise TypeError(f'{method}: {name} must be a bool, "true", "false" or None, got {value!r}')
    return value
