"""The plugin's patches of vLLM 0.26.0: one module per patched symbol, each applied where its target lives.

    module                    patched symbol                                          process
    init_speculator.py        vllm.v1.worker.gpu.spec_decode.init_speculator          worker
    init_model_state.py       vllm.v1.worker.gpu.model_states.init_model_state        worker
    compute_hash.py           vllm.config.speculative.SpeculativeConfig.compute_hash  every (compile-cache key)
    process_inputs.py         vllm.v1.engine.input_processor.InputProcessor.process_inputs  front end
    to_beam_search_params.py  CompletionRequest / ChatCompletionRequest .to_beam_search_params  API server
    add_cli_args.py           vllm.engine.arg_utils.EngineArgs.add_cli_args (--speculative-model)  CLI

The top-K path's patches (issue 12), which change nothing on a server without beam rows
(``padrec.topk_max_beams`` = 0):

    scheduler_init.py         vllm.v1.core.sched.scheduler.Scheduler.__init__ (beam KV admission)    engine core
    execute_model.py          GPUModelRunner.execute_model (beams as runner-private requests)          worker
    sample_tokens.py          GPUModelRunner.sample_tokens (a finished top-K answer as pooler_output)  worker

Each module names the vLLM modules it patches (``TARGETS``) and has an idempotent ``apply(module)`` (its
wrapper carries ``marking.mark_patched``'s mark, so a second ``apply`` wraps nothing), and its header says
what it does, why, and what would make it unnecessary.

When: ``install()`` applies each patch in the process that imports its target module, right after the
import (``on_import.after_import``), so worker-side patches run only where vLLM builds a GPU worker
(it imports ``vllm.v1.worker.gpu.*`` only there) and the API server patches only where the OpenAI
protocol is imported. Deciding by process in ``register()`` cannot work: vLLM calls it once per process
(``vllm.plugins.load_general_plugins`` returns at once once ``plugins_loaded`` is set), its engine core
and workers are forked by default (``VLLM_WORKER_MULTIPROC_METHOD=fork``, ``utils/system_utils.py``)
and so never call it again, and an in-process engine (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) runs the
worker in the front-end process.

Version: the patches wrap vLLM internals of one release; ``check_vllm_version`` refuses any other.
"""

from __future__ import annotations

from importlib import import_module

from vllm_padrec.integration.patches.on_import import after_import

WRITTEN_FOR_VLLM = "0.26.0"

# patch modules, in the order they are installed
PATCHES = (
    "vllm_padrec.integration.patches.init_speculator",  # PadRecSpeculator for PAD-Rec drafts (V2)
    "vllm_padrec.integration.patches.init_model_state",  # catalog masks on verification and draft logits (V2)
    "vllm_padrec.integration.patches.process_inputs",  # list settings checked in the front end (400)
    "vllm_padrec.integration.patches.to_beam_search_params",  # vLLM's beam search would drop them: refused
    "vllm_padrec.integration.patches.compute_hash",  # the draft in the compile-cache key
    "vllm_padrec.integration.patches.add_cli_args",  # vllm serve --speculative-model
    # the top-K path (a server with padrec.topk_max_beams > 0; without, each returns at its first check)
    "vllm_padrec.integration.patches.scheduler_init",  # KV blocks and beam rows held for top-K requests
    "vllm_padrec.integration.patches.execute_model",  # beams as runner-private requests
    "vllm_padrec.integration.patches.sample_tokens",  # a finished top-K answer as pooler_output
)


class UnsupportedVllmError(RuntimeError):
    """The installed vLLM is not the release the patches were written for."""


def check_vllm_version(installed: str) -> None:
    """Raise ``UnsupportedVllmError`` unless ``installed`` is vLLM 0.26.0 (a local build tag, ``+cu129``, is fine)."""
    if installed.split("+", 1)[0] != WRITTEN_FOR_VLLM:
        raise UnsupportedVllmError(
            f"vllm-padrec was written for vLLM {WRITTEN_FOR_VLLM}, but vLLM {installed} is installed: its patches "
            f"wrap internals of that one release. Install vllm=={WRITTEN_FOR_VLLM}, or uninstall vllm-padrec."
        )


def install() -> None:
    """Have every patch applied when (and where) its target module is imported; idempotent."""
    for name in PATCHES:
        patch = import_module(name)
        for target in patch.TARGETS:
            after_import(target, patch.apply)
