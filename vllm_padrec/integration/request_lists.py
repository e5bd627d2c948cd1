"""``RequestLists``: the list settings of every request slot of one Model Runner V2, and the masks built from them.

Each request's list settings (``list_settings``: server defaults, overridden by ``extra_args``, parsed
strictly by ``ListSpec``) become one row of a device table, indexed by vLLM's request slot
(``vllm_padrec.lists.settings_row``); the masks are computed from that row and the request's tokens
(``vllm_padrec.lists.masks``, or the Triton kernel: ``mask_backends``), so a request re-added after
preemption (with its output in the prompt) gets the same masks. ``MaskingSampler`` calls
``mask_verification``; the PAD-Rec speculator calls ``mask_draft_logits``.

Containment: the front end refuses requests whose settings this server cannot serve
(``patches/process_inputs.py``), so the engine should never meet one. If plugin code fails for a request
anyway, that request alone is refused: its rows allow only ``</s>`` (it ends at once, with an empty
list, never an unconstrained one) and the error is logged with its id; the engine step goes on. A
mask that fails falls back to the eager torch masks (the same masks, slower), and the draft masks
to none (drafts are proposals: verification still keeps every token in the catalog).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from vllm_padrec.catalog import TokenLayout
from vllm_padrec.device_lists import long_tensors
from vllm_padrec.errors import CatalogError, PadRecError
from vllm_padrec.integration.list_settings import ListSettings, catalog_path, load_catalog
from vllm_padrec.integration.mask_backends import MaskShapes, choose_masks, eager_masks
from vllm_padrec.lists import ListLimits, ListSpec, masks, settings_row
from vllm_padrec.lists.spec import ENABLED, NUM_FIELDS
from vllm_padrec.lists.tables import CatalogTables
from vllm_padrec.topk.admission import TOPK_KEY, VERIFICATION_KEY


class RequestLists:
    """The list settings of every request slot of one V2 runner, and the masks built from them."""

    def __init__(
        self,
        tables: CatalogTables,
        settings: ListSettings,
        max_num_reqs: int,
        max_drafts: int,  # K = num_speculative_tokens (0 without speculation)
        device: torch.device,
    ) -> None:
        from vllm.v1.worker.gpu.buffer_utils import StagedWriteTensor

        self.tables = tables
        self.settings = settings
        self.defaults = settings.defaults()
        self.limits = ListLimits(
            settings.max_list_items,
            tables.num_items,
            max_exclude_items=settings.max_exclude_items,
            max_topk=settings.max_topk,
        )
        self.max_drafts = max_drafts
        self.width = settings.max_list_items * tables.period  # W
        self.rows = StagedWriteTensor(
            (max_num_reqs, NUM_FIELDS + settings.max_exclude_items), dtype=torch.int32, device=device
        )
        self.enabled = np.zeros(max_num_reqs, dtype=bool)  # host mirror of the ENABLED column
        self.refused = np.zeros(max_num_reqs, dtype=bool)  # requests the plugin failed on: only </s> allowed
        self.req_states = None  # vLLM's RequestState (all_token_ids, total_len), from the sampler
        self._verify, self._draft = eager_masks()  # until prepare_masks installs the Triton ones
        self._copies: list[tuple[int, int]] = []  # (slot, the slot whose row it gets), staged by add_copy

    @property
    def mask_drafts(self) -> bool:
        return self.settings.mask_drafts

    @classmethod
    def from_vllm_config(cls, vllm_config: Any, device: torch.device) -> RequestLists | None:
        """None when the server has no catalog: then the front end refuses every constrained request
        (``patches/process_inputs.py``), and the engine needs no masks."""
        settings = ListSettings.from_additional_config(vllm_config.additional_config)
        model_config = vllm_config.model_config
        path = catalog_path(vllm_config, settings)
        catalog = load_catalog(path)
        if catalog is None:
            if settings.constraint:
                raise CatalogError(
                    f"padrec.constraint is on but there is no catalog at {path}: save padrec_catalog.json in the "
                    "target folder or set padrec.catalog in --additional-config"
                )
            _logger().info("vllm-padrec: no catalog at %s; requests for constrained lists are refused", path)
            return None
        tables = CatalogTables.build(catalog, device=device)
        if tables.layout.vocab_size > model_config.get_vocab_size():
            raise CatalogError(
                f"the catalog {path} needs {tables.layout.vocab_size} tokens but the target has "
                f"{model_config.get_vocab_size()}: it is not this target's catalog"
            )
        spec = vllm_config.speculative_config
        max_drafts = spec.num_speculative_tokens if spec is not None else 0
        lists = cls(tables, settings, vllm_config.scheduler_config.max_num_seqs, max_drafts, device)
        lists.prepare_masks(model_config, torch.device(device).type == "cuda")
        _logger().info("vllm-padrec: list constraints ready (%d items, settings %s)", tables.num_items, settings)
        return lists

    def prepare_masks(self, model_config: Any, on_cuda: bool) -> None:
        """Install the Triton masks when they warm up (``mask_backends``), before vLLM captures its drafting graphs."""
        shapes = MaskShapes(
            self.tables,
            self.rows.gpu,
            self.max_drafts,
            self.width,
            model_config.get_vocab_size(),
            model_config.max_model_len,
        )
        self._verify, self._draft = choose_masks(shapes, model_config, self.settings.triton_masks and on_cuda)

    # -- requests ------------------------------------------------------------------------------
    def add_request(self, req_index: int, new_req_data: Any, drop_topk: bool = False) -> None:
        """Record the request's list settings; never raises (module docstring: containment).

        ``drop_topk``: a top-K request R (``patches/init_model_state.py``), whose row is that of a one-item
        list: its ``padrec_topk`` is the engine's, read without it. R's beams take R's row (``add_copy``)."""
        row, refused = self._settings_row(new_req_data, drop_topk)
        self.rows.stage_write(req_index, 0, row)
        self.enabled[req_index] = bool(row[ENABLED])
        self.refused[req_index] = refused

    def add_copy(self, req_index: int, source_index: int) -> None:
        """Give slot ``req_index`` the settings of slot ``source_index``, whose row is already on the device: a
        beam of a top-K request R gets R's row, copied on the device by ``apply_staged_writes`` rather than
        built and staged from the host (262 columns a beam by default: K of them for each of a batch's
        top-K requests)."""
        self._copies.append((req_index, source_index))
        self.enabled[req_index] = self.enabled[source_index]
        self.refused[req_index] = self.refused[source_index]

    def _settings_row(self, new_req_data: Any, drop_topk: bool) -> tuple[list[int], bool]:
        """The request's settings row, and whether it is refused (then the row of a plain request)."""
        try:
            params = new_req_data.sampling_params
            extra_args = params.extra_args if params is not None else None
            if drop_topk and extra_args:
                # a copy: vLLM's stays; the beam's mask is its one-item list's, whatever R's top-K settings
                extra_args = {k: v for k, v in extra_args.items() if k not in (TOPK_KEY, VERIFICATION_KEY)}
            spec = ListSpec.from_extra_args(extra_args, self.defaults, self.limits)
            if spec.topk is not None:  # the top-K engine's (topk.engine); never served as a list
                raise PadRecError("padrec_topk: this engine has no top-K path")
            if spec.constraint and new_req_data.prompt_token_ids is None:
                raise PadRecError("a constrained list needs the prompt's token ids (prompt embeddings were given)")
            return self._row(spec, new_req_data.prompt_token_ids or ()), False
        except Exception as error:
            _logger().error(
                "vllm-padrec: request %s refused (it ends with an empty list): %s: %s",
                getattr(new_req_data, "req_id", "?"),
                type(error).__name__,
                error,
            )
            return self._row(ListSpec(), ()), True

    def _row(self, spec: ListSpec, prompt_token_ids) -> list[int]:
        return settings_row(spec, prompt_token_ids, self.settings.max_list_items, self.settings.max_exclude_items)

    def apply_staged_writes(self) -> None:
        """The staged rows, then the copies (their sources were written in an earlier step, or just now)."""
        self.rows.apply_write()
        if self._copies:
            copies, self._copies = self._copies, []
            dst, src = long_tensors([d for d, _ in copies], [s for _, s in copies], device=self.rows.gpu.device)
            self.rows.gpu[dst] = self.rows.gpu[src]

    # -- masks ---------------------------------------------------------------------------------
    def mask_verification(self, logits: torch.Tensor, input_batch: Any) -> None:
        """Mask the target's logits (every draft position + the bonus row) of constrained requests; never
        raises (module docstring: containment)."""
        slots = input_batch.idx_mapping_np
        if self.req_states is None or not (self.enabled[slots].any() or self.refused[slots].any()):
            return  # no constrained request in this batch: no GPU work
        args = (
            logits,
            self.tables,
            self.rows.gpu,
            self.req_states.all_token_ids.gpu,
            self.req_states.total_len.gpu,
            input_batch.expanded_idx_mapping,
            input_batch.expanded_local_pos,
            input_batch.input_ids[input_batch.logits_indices],
            self.max_drafts,
            self.width,
        )
        try:
            self._verify(*args)
        except Exception as error:
            if self._verify is masks.mask_verification_logits:
                return self._refuse_batch(logits, input_batch, error)
            _logger().error(
                "vllm-padrec: the verification mask failed (%s: %s); using the eager torch masks",
                type(error).__name__,
                error,
            )
            self._verify = masks.mask_verification_logits
            return self.mask_verification(logits, input_batch)
        if self.refused[slots].any():
            self._only_eos(logits, input_batch, self.refused)

    def _refuse_batch(self, logits: torch.Tensor, input_batch: Any, error: Exception) -> None:
        """The eager masks failed too: refuse this batch's constrained requests rather than serve them unmasked."""
        slots = input_batch.idx_mapping_np
        failed = slots[self.enabled[slots]]
        _logger().error(
            "vllm-padrec: the masks failed (%s: %s); refusing the %d constrained requests of this step",
            type(error).__name__,
            error,
            len(failed),
        )
        self.refused[failed] = True
        self._only_eos(logits, input_batch, self.refused)

    def mask_topk_owners(self, logits: torch.Tensor, input_batch: Any, owner_tokens: Mapping[int, int]) -> None:
        """On a server with top-K on: the logits rows of each top-K request R (slot -> its one token, from
        ``TopKEngine.owner_tokens``) allow only that token, ``<pad>`` at R's steps before its last and ``</s>``
        at its last (topk/DESIGN.md, section 5: the per-slot override beside ``refused``). R's settings row is
        that of a one-item list, whose mask refuses every token once R's history holds ``<pad>``; the override
        keeps R's row from ever being fully masked. The token's logit becomes 0.0 (the mask ran in place, the raw
        value is gone): vLLM's sampler then picks it at any temperature. Runs after the beams are selected,
        because at R's step 0 the selection reads R's masked row (``TopKEngine.after_masking``)."""
        if not owner_tokens:
            return
        by_slot = np.full(len(self.enabled), -1, dtype=np.int64)  # [max_num_reqs]: R's token, -1: not a top-K R
        by_slot[list(owner_tokens)] = list(owner_tokens.values())
        (token,) = long_tensors(by_slot, device=logits.device)  # [max_num_reqs], with no host sync
        token = token[input_batch.expanded_idx_mapping.long()]  # [R]
        vocab = torch.arange(logits.shape[1], device=logits.device)  # [V]
        allowed = vocab[None, :] == token[:, None]  # [R, V]; all False on rows of other requests
        owner = (token >= 0)[:, None]  # [R, 1]
        logits.masked_fill_(owner & ~allowed, float("-inf"))
        logits.masked_fill_(allowed, 0.0)

    @staticmethod
    def _only_eos(logits: torch.Tensor, input_batch: Any, refused: np.ndarray) -> None:
        """Allow only </s> on the rows of refused requests."""
        rows = torch.from_numpy(refused).to(logits.device)[input_batch.expanded_idx_mapping.long()]  # [R]
        keep = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
        keep[TokenLayout.EOS] = True
        logits.masked_fill_(rows[:, None] & ~keep, float("-inf"))

    def mask_draft_logits(
        self,
        logits: torch.Tensor,  # [B, V]
        idx_mapping: torch.Tensor,  # [B]
        draft_tokens: torch.Tensor,  # [B, K]
        draft_step: torch.Tensor,  # []
    ) -> None:
        """Mask the draft's logits; runs inside CUDA graphs (persistent tensors only, no host check). A failure
        leaves the drafts unmasked (verification still masks every kept token) and turns the draft masks off."""
        if self.req_states is None or self._draft is None:
            return
        try:
            self._draft(
                logits,
                self.tables,
                self.rows.gpu,
                self.req_states.all_token_ids.gpu,
                self.req_states.total_len.gpu,
                idx_mapping,
                draft_tokens,
                draft_step,
                self.width,
            )
        except Exception as error:
            _logger().error(
                "vllm-padrec: the draft mask failed (%s: %s); drafts are no longer masked", type(error).__name__, error
            )
            self._draft = None


def _logger():
    from vllm_padrec.integration.log import get_logger

    return get_logger(__name__)
