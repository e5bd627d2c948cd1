"""A server's list settings (``--additional-config '{"padrec": {...}}'``), its catalog, and the check of a
request's list settings against both.

    additional_config["padrec"]   meaning
    constraint      (false)       constrain every request unless it says padrec_constraint=false
    num_items       (none)        default exact list length (none: min_items..max_list_items)
    min_items       (1)           default fewest items before </s>
    no_repeat       (false)       default: an item at most once per list
    max_list_items  (32)          longest list; sets the mask window (W = items * (L+1))
    max_exclude_items (256)       most items one request may exclude (padrec_exclude_items)
    max_topk        (256)         largest K of a top-K request (padrec_topk), 1..4096
    topk_max_beams  (0)           beam rows held for top-K requests, 0..65536 (0: top-K off; else >= max_topk)
    topk_draft_beams (0)          N, the draft's beams in a drafted top-K round, 0..256 (0: undrafted top-K;
                                  ``topk_drafting.py``)
    mask_drafts     (true)        also mask the draft's proposals (PAD-Rec and vLLM's EAGLE drafts; off: vLLM's
                                  EAGLE drafts run vanilla)
    triton_masks    (true)        the fused Triton mask kernel for both (CUDA; else the eager torch masks)
    forced_tail     (0)           E, 0..8: the last E of a step's drafts filled from the catalog alone, no draft
                                  forward (``forced_tail.py``; needs mask_drafts, no drafted top-K)
    decode_loop_graph (true)      the draft's decode steps of a round as one CUDA graph (``decode_loop_graph.py``;
                                  FlashAttention or Triton attention; other backends keep vLLM's loop)
    catalog         (none)        catalog file or folder; default: the target folder's padrec_catalog.json

Per request, ``extra_args`` override the first four, may exclude items and may ask for the top K items
(``vllm_padrec.lists.spec``). The catalog is found here once for every part of the plugin (front-end check,
engine masks, ``/v1/recommendations``), so that all of them read the same file.

Top-K requests (``padrec_topk``) are parsed and checked in full, then refused by ``check_request`` on a
server that holds no beam rows for them (``topk_max_beams`` = 0, the default: the rows are held back from
every engine step, so top-K is a server's choice), with the setting that turns it on.
"""

from __future__ import annotations

import functools
import os
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vllm_padrec.catalog import CATALOG_FILE, ItemCatalog
from vllm_padrec.errors import PadRecError
from vllm_padrec.lists import KEY_PREFIX, ListLimits, ListSpec, ListSpecError
from vllm_padrec.lists.spec import DEFAULT_MAX_TOPK

ADDITIONAL_CONFIG_KEY = "padrec"
# The masks read W = max_list_items * (L + 1) list tokens per logits row: the bound keeps that window
# (and the settings it implies) within what a served context can hold.
MAX_LIST_ITEMS_LIMIT = 4096
# Each request slot's row of the settings table holds max_exclude_items columns; the bound keeps it small.
MAX_EXCLUDE_ITEMS_LIMIT = 4096
# K beams per top-K request, each a request slot and KV blocks of its own in the engine (issue 12)
MAX_TOPK_LIMIT = 4096
# Beam rows held back from every engine step for top-K requests' beams (each a request slot and a token row)
MAX_TOPK_BEAMS_LIMIT = 65536
# The draft's beams in a drafted top-K round (issue 13), each up to gamma more runner rows per request
MAX_TOPK_DRAFT_BEAMS_LIMIT = 256
# Draft slots filled from the catalog after the draft's own (forced_tail.py): each a verified position per request
MAX_FORCED_TAIL_LIMIT = 8
# settings this plugin no longer reads -> what to do instead (a server given one does not start)
REMOVED_KEYS = {
    "compile_masks": "the masks are the Triton kernel (triton_masks) or the eager torch masks: drop the key",
    "compile_draft_masks": "the masks are the Triton kernel (triton_masks) or the eager torch masks: drop the key",
}


class ListSettings(BaseModel):
    """The ``padrec`` section of ``--additional-config``: per-request defaults, limits, mask backends."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    constraint: bool = False  # constrain every request unless it says padrec_constraint=false
    num_items: int | None = Field(None, ge=1)  # exact list length; None: any length in min_items..max_list_items
    min_items: int = Field(1, ge=1)  # fewest items before </s>
    no_repeat: bool = False  # an item at most once per list
    max_list_items: int = Field(32, ge=1, le=MAX_LIST_ITEMS_LIMIT)  # longest list the masks handle
    max_exclude_items: int = Field(256, ge=0, le=MAX_EXCLUDE_ITEMS_LIMIT)  # most items a request may exclude
    max_topk: int = Field(DEFAULT_MAX_TOPK, ge=1, le=MAX_TOPK_LIMIT)  # largest K a top-K request may ask for
    topk_max_beams: int = 0  # beam rows held for top-K requests' beams; 0: top-K off (_beam_rows_in_range)
    topk_draft_beams: int = Field(0, ge=0, le=MAX_TOPK_DRAFT_BEAMS_LIMIT)  # N of drafted rounds; 0: undrafted
    mask_drafts: bool = True  # mask the drafts' proposals too (more accepted drafts); EAGLE drafts: vanilla when off
    triton_masks: bool = True  # the fused Triton kernel (kernels/catalog_mask.py) for both masks (CUDA)
    forced_tail: int = Field(0, ge=0, le=MAX_FORCED_TAIL_LIMIT)  # drafts filled from the catalog alone (forced_tail.py)
    decode_loop_graph: bool = True  # a round's draft decode steps as one CUDA graph (decode_loop_graph.py)
    catalog: str | None = None  # catalog file or folder; None: the target checkpoint folder

    @property
    def topk_on(self) -> bool:
        """Whether this server holds beam rows for top-K requests (``topk_max_beams`` > 0)."""
        return self.topk_max_beams > 0

    @field_validator("topk_max_beams", mode="before")
    @classmethod
    def _beam_rows_in_range(cls, value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_TOPK_BEAMS_LIMIT:
            raise ValueError(
                f"padrec.topk_max_beams must be an integer >= 0 and <= {MAX_TOPK_BEAMS_LIMIT} (0: no top-K requests)"
            )
        return value

    @model_validator(mode="after")
    def _lengths_fit(self) -> ListSettings:
        cap = self.max_list_items
        if self.num_items is not None and self.num_items > cap:
            raise ValueError(f"num_items={self.num_items} is more than max_list_items={cap}")
        if self.min_items > cap:
            raise ValueError(f"min_items={self.min_items} is more than max_list_items={cap}")
        if self.topk_draft_beams and not self.topk_on:
            raise ValueError(
                f"padrec.topk_draft_beams={self.topk_draft_beams} drafts top-K beams, but top-K is off "
                "(padrec.topk_max_beams is 0): set padrec.topk_max_beams too, or drop padrec.topk_draft_beams"
            )
        if self.forced_tail and not self.mask_drafts:
            raise ValueError(
                f"padrec.forced_tail={self.forced_tail} fills drafts from the draft masks, which "
                "padrec.mask_drafts=false turns off: drop one of them"
            )
        if self.forced_tail and self.topk_draft_beams:
            raise ValueError(
                f"padrec.forced_tail={self.forced_tail} and padrec.topk_draft_beams={self.topk_draft_beams}: a drafted "
                "top-K round reads every draft slot as its beams' chain; drop one of them"
            )
        if self.topk_on and self.max_topk > self.topk_max_beams:
            raise ValueError(
                f"padrec.topk_max_beams={self.topk_max_beams} is less than padrec.max_topk={self.max_topk}: a request "
                f"for K > {self.topk_max_beams} items could never be admitted; raise padrec.topk_max_beams or lower "
                "padrec.max_topk"
            )
        return self

    @classmethod
    def from_additional_config(cls, additional_config: Mapping | None) -> ListSettings:
        """The server's settings; a bad section is a ``PadRecError`` naming the key (the server does not start)."""
        section = (additional_config or {}).get(ADDITIONAL_CONFIG_KEY) or {}
        if not isinstance(section, Mapping):
            raise PadRecError(f"--additional-config's {ADDITIONAL_CONFIG_KEY!r} must be an object, got {section!r}")
        try:
            return cls.model_validate(dict(section))
        except ValidationError as error:
            problems = "; ".join(_problem(e) for e in error.errors())
            raise PadRecError(
                f"bad --additional-config '{{\"{ADDITIONAL_CONFIG_KEY}\": ...}}': {problems} (keys: "
                f"{sorted(cls.model_fields)})"
            ) from None

    def defaults(self) -> ListSpec:
        """What a request gets for the list settings it leaves out."""
        return ListSpec(
            constraint=self.constraint, num_items=self.num_items, min_items=self.min_items, no_repeat=self.no_repeat
        )


def _problem(error: Mapping) -> str:
    where = ".".join(map(str, error["loc"])) or ADDITIONAL_CONFIG_KEY
    if error["type"] == "extra_forbidden":
        removed = REMOVED_KEYS.get(where)
        return f"{where!r} was removed: {removed}" if removed else f"unknown key {where!r}"
    return f"{where}: {error['msg']}, got {error.get('input')!r}"


def server_settings(vllm_config: Any) -> ListSettings:
    return ListSettings.from_additional_config(vllm_config.additional_config)


def catalog_path(vllm_config: Any, settings: ListSettings) -> Path:
    """Where the server's catalog is: ``padrec.catalog`` (a file or a folder), else the target folder's."""
    path = Path(settings.catalog or vllm_config.model_config.model)
    return path / CATALOG_FILE if path.is_dir() else path


def load_catalog(path: Path) -> ItemCatalog | None:
    """The catalog at ``path`` (read once per process and file version); None when there is none."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return _load_catalog(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _load_catalog(path: str, mtime_ns: int, size: int) -> ItemCatalog:
    return ItemCatalog.load(path)


_RUNS_V2: dict[int, bool] = {}  # id(vllm_config) -> its use_v2_model_runner, while the config lives


def runs_model_runner_v2(vllm_config: Any) -> bool:
    """``vllm_config.use_v2_model_runner``, read once per config object. vLLM's property scans every
    installed distribution's entry points each time it is read (``config/vllm.py:2196``, through
    ``_get_v2_model_runner_unsupported_features``): on the H200 kit, 586 distributions, milliseconds per
    request in the front end. A config that cannot be weakly referenced (a test's stand-in) is read each time."""
    key = id(vllm_config)
    if key in _RUNS_V2:
        return _RUNS_V2[key]
    runs_v2 = bool(getattr(vllm_config, "use_v2_model_runner", True))
    try:
        weakref.finalize(vllm_config, _RUNS_V2.pop, key, None)
    except TypeError:
        return runs_v2
    _RUNS_V2[key] = runs_v2
    return runs_v2


def list_limits(vllm_config: Any, settings: ListSettings) -> ListLimits:
    """What this server can serve: its longest list, and its catalog when its engine installs the masks
    (Model Runner V2: ``patches/init_model_state.py``; V1, which vLLM runs for Medusa and n-gram drafts, has
    no such hook)."""
    max_list_items = settings.max_list_items
    if not runs_model_runner_v2(vllm_config):
        method = getattr(getattr(vllm_config, "speculative_config", None), "method", None)
        why = (
            f"it runs vLLM's Model Runner V1{f' (speculative method {method!r})' if method else ''}, where "
            "the plugin's masks are not installed"
        )
        return ListLimits(max_list_items, None, why, settings.max_exclude_items, settings.max_topk)
    path = catalog_path(vllm_config, settings)
    catalog = load_catalog(path)
    if catalog is None:
        why = (
            f"it has no item catalog (none at {path}): serve a target folder holding {CATALOG_FILE} or set "
            "padrec.catalog in --additional-config"
        )
        return ListLimits(max_list_items, None, why, settings.max_exclude_items, settings.max_topk)
    return ListLimits(
        max_list_items,
        len(catalog),
        max_exclude_items=settings.max_exclude_items,
        max_topk=settings.max_topk,
        topk_rules=topk_rules(vllm_config, settings),
    )


def topk_rules(vllm_config: Any, settings: ListSettings) -> tuple[str, ...]:
    """The ``padrec_topk_verification`` rules this server applies: those of its drafted top-K rounds, none when
    its top-K runs undrafted. A server whose drafting is misconfigured never starts (the scheduler refuses it),
    so here it serves none."""
    from vllm_padrec.integration.topk_drafting import topk_drafting

    try:
        drafting = topk_drafting(vllm_config, settings)
    except PadRecError:
        return ()
    return () if drafting is None else drafting.rules


def check_request(vllm_config: Any, extra_args: Mapping | None) -> ListSpec:
    """The list a request asks for, checked against this server; raises ``ListSpecError`` (a ValueError).

    Requests that name no list setting on a server without ``padrec.constraint`` are answered
    without reading the catalog (they are not the plugin's). A top-K request is parsed first, so that a bad
    value gets its own message, then refused on a server without beam rows (``check_topk_on``)."""
    settings = server_settings(vllm_config)
    if not settings.constraint and not any(isinstance(k, str) and k.startswith(KEY_PREFIX) for k in extra_args or ()):
        return ListSpec()
    spec = ListSpec.from_extra_args(extra_args, settings.defaults(), list_limits(vllm_config, settings))
    if spec.topk is not None:
        check_topk_on(settings)
    return spec


def check_topk_on(settings: ListSettings) -> None:
    """Raise ``ListSpecError`` naming ``padrec_topk`` on a server that holds no beam rows (``topk_max_beams``
    = 0): its engine has no top-K state, so the request must not reach it."""
    if not settings.topk_on:
        raise ListSpecError(
            "padrec_topk",
            "padrec_topk: this server does not serve top-K requests (padrec.topk_max_beams is 0); start it with "
            f'--additional-config \'{{"padrec": {{"topk_max_beams": N}}}}\', N >= padrec.max_topk '
            f"({settings.max_topk}), or ask for a list (padrec_num_items)",
        )
