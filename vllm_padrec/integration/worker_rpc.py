"""What the plugin answers on a worker through vLLM's ``collective_rpc``: methods mixed into vLLM's worker by its
supported hook ``worker_extension_cls`` (``LLM(..., worker_extension_cls=WORKER_RPC)``, ``vllm serve
--worker-extension-cls``; vllm/v1/worker/worker_base.py:261-287 adds the class to the worker's bases), so that
a caller reaches the engine's speculator by name (``llm.collective_rpc("padrec_decode_loop_graph")``) without
shipping a pickled function to the engine core.

Used by ``bench_spec_decode``: ``padrec_loop`` switches ``padrec.decode_loop_graph`` between calls of one engine,
which times the graph against vLLM's loop without the spread between two engines. The methods' names start with
``padrec_``: vLLM refuses an extension whose names the worker already has.

``vllm serve --worker-extension-cls`` answers the same method on vLLM's development endpoint (``POST
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
        if isinstance(enabled, str) and enabled.lower() in SWITCH_WORDS:
            enabled = SWITCH_WORDS[enabled.lower()]
        if enabled is not None and not isinstance(enabled, bool):
            raise TypeError(
                f'padrec_decode_loop_graph: enabled must be a bool, "true", "false" or None, got {enabled!r}'
            )
        speculator = getattr(getattr(self, "model_runner", None), "speculator", None)
        graphs = getattr(speculator, "_loop_graphs", None)
        if graphs is None:
            return None
        if enabled is not None:
            graphs.enabled = enabled
        return {"graphs": len(graphs.graphs), "replays": graphs.replays, "enabled": graphs.enabled}
