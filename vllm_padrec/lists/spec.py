"""``ListSpec``: what one request asks of its recommendation list, parsed strictly from client values.

A request says what it wants in ``SamplingParams.extra_args`` (``vllm_xargs`` in the OpenAI API):

    key                 field         values
    padrec_constraint   constraint    true / false (also 1 / 0, "true" / "false", "yes" / "no", "on" / "off")
    padrec_num_items    num_items     exactly this many items, 1..max_list_items (none: any length)
    padrec_min_items    min_items     fewest items before </s>, 1..max_list_items
    padrec_no_repeat    no_repeat     true / false: an item at most once per list
    padrec_exclude_items  exclude_items  a list of catalog item indices (0..N-1) the list may not contain,
                                       e.g. the user's history; duplicates are dropped; at most
                                       max_exclude_items of them, and they must leave the items the list needs
    padrec_topk         topk          the K best single items (beam search over items), 1..max_topk: a JSON
                                       integer only (2.5, 10.0, "10", true are refused); needs the constraint,
                                       padrec_num_items 1 or left out (left out, it is 1 whatever the server's
                                       default: the server's list defaults do not apply to top-K), no
                                       padrec_no_repeat, and at least K catalog items left after
                                       padrec_exclude_items
    padrec_topk_verification  topk_verification  "strict" or "relaxed": how a top-K request's drafted beams are
                                       verified (issue 13); needs padrec_topk and a server that drafts
                                       top-K beams (none does yet: no speculator drafts them inside vLLM)

Keys it leaves out take the server's defaults (``--additional-config '{"padrec": {...}}'``; a
server default ``num_items`` can be changed per request, not removed). Values
come from clients, so the parser is strict: a value that is not exactly one of the above (2.9,
"maybe", NaN, 1e309, a list), an unknown ``padrec_*`` key, a list setting without the constraint,
a length the server cannot serve, or the constraint on a server without a catalog, is a
``ListSpecError`` naming the key and what it accepts. Nothing is clamped, dropped or coerced: what the
client gets is what it asked for, or an error. The same parser runs at the edge (every request vLLM's
front end accepts, before it reaches the engine) and in the engine (which therefore never meets a
value it cannot serve).

In the engine a spec becomes one row of the settings table (``settings_row``), which the list masks
(``vllm_padrec.lists.masks`` and the Triton kernel) read per request slot.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vllm_padrec.catalog import TokenLayout
from vllm_padrec.errors import PadRecError

KEY_PREFIX = "padrec_"
# field of ListSpec -> its key in SamplingParams.extra_args
REQUEST_KEYS = {
    "constraint": "padrec_constraint",
    "num_items": "padrec_num_items",
    "min_items": "padrec_min_items",
    "no_repeat": "padrec_no_repeat",
    "exclude_items": "padrec_exclude_items",
    "topk": "padrec_topk",
    "topk_verification": "padrec_topk_verification",
}
VERIFICATION_RULES = ("strict", "relaxed")  # padrec_topk_verification's values; strict is the lossless default
# Columns of the settings table ([max_num_reqs, NUM_FIELDS + X] int32, one row per request slot); columns
# NUM_FIELDS.. hold the request's excluded items (catalog indices, then -1), X = the server's max_exclude_items
ENABLED, LIST_START, MAX_ITEMS, MIN_ITEMS, NO_REPEAT = range(5)
NUM_FIELDS = 5
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_INTEGER = re.compile(r"[+-]?\d{1,18}")
DEFAULT_MAX_TOPK = 256  # the server setting max_topk's default (the "K up to at least 256")


class ListSpecError(PadRecError):
    """A request's list settings that this server cannot serve as asked; ``key`` names the setting."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class ListLimits:
    """What a server can serve: its longest list, its catalog, how many items a request may exclude, and its
    largest top-K."""

    max_list_items: int  # longest list the masks handle
    catalog_items: int | None  # items of the catalog; None: the server cannot constrain lists
    why_not: str = ""  # with catalog_items None: why (no catalog at PATH, a runner without the masks, ...)
    max_exclude_items: int = 0  # most items one request may exclude (the settings table's exclusion columns)
    max_topk: int = DEFAULT_MAX_TOPK  # largest K a top-K request may ask for
    topk_rules: tuple[str, ...] = ()  # padrec_topk_verification rules served (drafted top-K); (): undrafted


@dataclass(frozen=True)
class ListSpec:
    """One request's list: constrained or not, its length, whether items may repeat, the items it may not hold,
    and, for a top-K request, K (the K best one-item lists, best first, instead of one list)."""

    constraint: bool = False  # the output is a list of catalog items
    num_items: int | None = None  # exactly this many items; None: any length in min_items..max_list_items
    min_items: int = 1  # fewest items before </s> (= num_items when that is set)
    no_repeat: bool = False  # an item at most once per list
    exclude_items: tuple[int, ...] = ()  # catalog indices the list may not contain (distinct)
    topk: int | None = None  # K of a top-K request (its K candidates are one-item lists); None: one list
    topk_verification: str | None = None  # a drafted top-K request's rule (VERIFICATION_RULES); None: strict

    def __post_init__(self) -> None:  # one form per list: an exact length is also the fewest items
        if self.topk is not None and self.num_items is None:  # a top-K candidate is one item
            object.__setattr__(self, "num_items", 1)
        if self.num_items is not None:
            object.__setattr__(self, "min_items", self.num_items)

    def to_extra_args(self) -> dict[str, Any]:
        """The request's ``extra_args``: every field that decides the list, so that no server default applies
        (``num_items`` when set, else ``min_items``; ``exclude_items`` when there are any; ``topk`` when set)."""
        length = "num_items" if self.num_items is not None else "min_items"
        names = ("constraint", length, "no_repeat") if self.constraint else ("constraint",)
        args = {REQUEST_KEYS[name]: getattr(self, name) for name in names}
        if self.constraint and self.exclude_items:
            args[REQUEST_KEYS["exclude_items"]] = list(self.exclude_items)
        if self.constraint and self.topk is not None:
            args[REQUEST_KEYS["topk"]] = self.topk
        if self.constraint and self.topk_verification is not None:
            args[REQUEST_KEYS["topk_verification"]] = self.topk_verification
        return args

    @classmethod
    def from_extra_args(cls, extra_args: Mapping[str, Any] | None, defaults: ListSpec, limits: ListLimits) -> ListSpec:
        """The spec a request asks for (module docstring); raises ``ListSpecError`` naming the bad key."""
        args = dict(extra_args or {})
        keys = set(REQUEST_KEYS.values())
        unknown = sorted(k for k in args if isinstance(k, str) and k.startswith(KEY_PREFIX) and k not in keys)
        if unknown:
            raise ListSpecError(unknown[0], f"unknown setting {unknown[0]!r}: the list settings are {sorted(keys)}")
        given = {name: args[key] for name, key in REQUEST_KEYS.items() if key in args and args[key] is not None}
        cap = limits.max_list_items
        constraint = parse_flag("padrec_constraint", given.get("constraint", defaults.constraint))
        num_items = given.get("num_items", defaults.num_items)
        if num_items is not None:
            num_items = parse_count("padrec_num_items", num_items, cap)
        min_items = parse_count("padrec_min_items", given.get("min_items", defaults.min_items), cap)
        no_repeat = parse_flag("padrec_no_repeat", given.get("no_repeat", defaults.no_repeat))
        topk = parse_topk("padrec_topk", given["topk"], limits.max_topk) if "topk" in given else None
        if not constraint:
            stray = [
                REQUEST_KEYS[name]
                for name in ("num_items", "min_items", "no_repeat", "exclude_items", "topk", "topk_verification")
                if name in given
            ]
            if stray:
                raise ListSpecError(
                    stray[0], f"{stray[0]} applies to constrained lists only: set padrec_constraint to true"
                )
            return cls()
        if limits.catalog_items is None:
            raise ListSpecError(
                "padrec_constraint", f"padrec_constraint: this server cannot constrain lists: {limits.why_not}"
            )
        if topk is not None:  # one-item candidates: the server's list defaults do not apply
            num_items, min_items, no_repeat = _topk_list(given, num_items, min_items, no_repeat)
        if num_items is not None and "min_items" in given and min_items > num_items:
            raise ListSpecError(
                "padrec_min_items", f"padrec_min_items={min_items} is more than padrec_num_items={num_items}"
            )
        exclude_items = given.get("exclude_items", defaults.exclude_items)
        exclude_items = parse_items(
            "padrec_exclude_items", exclude_items, limits.catalog_items, limits.max_exclude_items
        )
        verification = None
        if "topk_verification" in given:
            verification = parse_verification(given["topk_verification"], topk, limits)
        spec = cls(True, num_items, min_items, no_repeat, exclude_items, topk, verification)
        left = limits.catalog_items - len(exclude_items)
        if topk is not None and left < topk:
            where = (
                f"padrec_exclude_items leaves {left} of the catalog's {limits.catalog_items} items"
                if exclude_items
                else f"the catalog has {left} items"
            )
            raise ListSpecError("padrec_topk", f"padrec_topk={topk}: {where}, fewer than the {topk} asked")
        if no_repeat and spec.min_items > limits.catalog_items:
            key = "padrec_num_items" if num_items is not None else "padrec_min_items"
            raise ListSpecError(
                key,
                f"{key}={spec.min_items} with padrec_no_repeat needs {spec.min_items} distinct items, but the "
                f"catalog has {limits.catalog_items}",
            )
        needed = spec.min_items if no_repeat else 1  # items the list needs to choose from
        if left < needed:
            raise ListSpecError(
                "padrec_exclude_items",
                f"padrec_exclude_items leaves {left} of the catalog's {limits.catalog_items} items, fewer than the "
                f"{needed} the list needs",
            )
        return spec


def settings_row(
    spec: ListSpec, prompt_token_ids: Sequence[int], max_list_items: int, max_exclude_items: int = 0
) -> list[int]:
    """A request's row of the settings table: NUM_FIELDS settings (all zeros when unconstrained), then
    ``max_exclude_items`` exclusion columns (the excluded items, then -1). The list starts after the last
    ``<rec>`` of the prompt (after the prompt when it has none)."""
    if len(spec.exclude_items) > max_exclude_items:
        raise ValueError(f"{len(spec.exclude_items)} excluded items do not fit in {max_exclude_items} columns")
    excluded = list(spec.exclude_items) + [-1] * (max_exclude_items - len(spec.exclude_items))
    row = [0] * NUM_FIELDS
    if not spec.constraint:
        return row + excluded
    prompt = list(prompt_token_ids)
    last_rec = max((i for i, t in enumerate(prompt) if t == TokenLayout.REC), default=None)
    row[ENABLED] = 1
    row[LIST_START] = len(prompt) if last_rec is None else last_rec + 1
    row[MAX_ITEMS] = spec.num_items if spec.num_items is not None else max_list_items
    row[MIN_ITEMS] = spec.min_items
    row[NO_REPEAT] = int(spec.no_repeat)
    return row + excluded


def parse_flag(key: str, value: Any) -> bool:
    """A client's true / false (module docstring); anything else is a ``ListSpecError``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):  # NaN and inf compare unequal
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ListSpecError(key, f"{key} must be true or false (or 1 / 0), got {value!r}")


def parse_count(key: str, value: Any, cap: int) -> int:
    """A client's item count in 1..cap: an integer, an integral finite float or a decimal string."""
    number = _integer(value)
    if number is None or not 1 <= number <= cap:
        raise ListSpecError(key, f"{key} must be an integer in 1..{cap} (this server's max_list_items), got {value!r}")
    return number


def parse_topk(key: str, value: Any, cap: int) -> int:
    """A client's K in 1..cap: a JSON integer only. Stricter than ``parse_count``: K sizes the beam search,
    so 2.5, 10.0, "10" and true are refused rather than read as a number."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= cap:
        raise ListSpecError(key, f"{key} must be an integer in 1..{cap} (this server's max_topk), got {value!r}")
    return value


def parse_verification(value: Any, topk: int | None, limits: ListLimits) -> str:
    """``padrec_topk_verification``: exactly "strict" or "relaxed", on a top-K request, on a server that drafts
    top-K beams."""
    key = REQUEST_KEYS["topk_verification"]
    if not isinstance(value, str) or value not in VERIFICATION_RULES:
        raise ListSpecError(key, f"{key} must be one of {list(VERIFICATION_RULES)}, got {value!r}")
    if topk is None:
        raise ListSpecError(key, f"{key} applies to top-K requests only: set padrec_topk")
    if not limits.topk_rules:
        raise ListSpecError(
            key,
            f"{key}: this server does not draft top-K beams (it needs a draft model and padrec.topk_draft_beams); "
            "leave it out for the exact beam search",
        )
    if value not in limits.topk_rules:
        raise ListSpecError(
            key,
            f"{key}: this server verifies drafted top-K beams by {list(limits.topk_rules)} only ({value!r} needs the "
            "draft's own beam search: a server started with padrec.topk_draft_beams > 1)",
        )
    return value


def _topk_list(
    given: Mapping[str, Any], num_items: int | None, min_items: int, no_repeat: bool
) -> tuple[int, int, bool]:
    """(num_items, min_items, no_repeat) of a top-K request's candidates: one item each. A request that
    asks for another length, or for no repeats, is refused naming padrec_topk; the server's defaults for
    those settings are replaced, not refused."""
    if "num_items" in given and num_items != 1:
        raise ListSpecError(
            "padrec_topk", f"padrec_topk asks for single items: padrec_num_items must be 1 or left out, got {num_items}"
        )
    if "min_items" in given and min_items != 1:
        raise ListSpecError(
            "padrec_topk", f"padrec_topk asks for single items: padrec_min_items must be 1 or left out, got {min_items}"
        )
    if "no_repeat" in given and no_repeat:
        raise ListSpecError(
            "padrec_topk", "padrec_topk's K items are distinct already: padrec_no_repeat must be false or left out"
        )
    return 1, 1, False


def parse_items(key: str, value: Any, catalog_items: int, cap: int) -> tuple[int, ...]:
    """A client's list of catalog item indices in 0..catalog_items-1 (each as ``parse_count`` reads a number),
    duplicates dropped, at most ``cap`` of them."""
    if not isinstance(value, (list, tuple)):
        raise ListSpecError(key, f"{key} must be a list of item indices in 0..{catalog_items - 1}, got {value!r}")
    items = []
    for element in value:
        number = _integer(element)
        if number is None or not 0 <= number < catalog_items:
            raise ListSpecError(
                key, f"{key} must hold item indices in 0..{catalog_items - 1} (the catalog's), got {element!r}"
            )
        items.append(number)
    distinct = tuple(dict.fromkeys(items))
    if len(distinct) > cap:
        raise ListSpecError(
            key, f"{key} holds {len(distinct)} distinct items, more than this server's max_exclude_items={cap}"
        )
    return distinct


def _integer(value: Any) -> int | None:
    """An integer, an integral finite float or a decimal string as an int; None for anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value.strip())
    return None
