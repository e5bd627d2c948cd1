"""ListSpec.from_extra_args: the strict parser of a request's list settings (vllm_padrec/lists/spec.py)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_padrec.lists import REQUEST_KEYS, ListLimits, ListSpec, ListSpecError

LIMITS = ListLimits(max_list_items=32, catalog_items=8)
OFF = ListSpec()


def parse(extra_args, defaults=OFF, limits=LIMITS):
    return ListSpec.from_extra_args(extra_args, defaults, limits)


def refused(extra_args, key, *words, defaults=OFF, limits=LIMITS):
    with pytest.raises(ListSpecError) as error:
        parse(extra_args, defaults, limits)
    assert error.value.key == key, str(error.value)
    for word in words:
        assert word in str(error.value), str(error.value)
    assert "\n" not in str(error.value)
    return error.value


def test_accepted_values_and_their_meaning():
    assert parse(None) == OFF and parse({}) == OFF and parse({"other_plugin": 1}) == OFF
    spec = parse({"padrec_constraint": 1, "padrec_num_items": 3, "padrec_no_repeat": "true"})
    assert spec == ListSpec(constraint=True, num_items=3, min_items=3, no_repeat=True)
    assert ListSpec(True, 3, 1, False).min_items == 3  # an exact length is also the fewest items
    assert parse({"padrec_constraint": True, "padrec_min_items": "2"}) == ListSpec(True, None, 2, False)
    assert parse({"padrec_constraint": 1, "padrec_num_items": 3, "padrec_min_items": 2}) == ListSpec(True, 3, 3, False)
    assert parse({"padrec_constraint": "on", "padrec_num_items": 4.0}).num_items == 4  # integral float
    assert parse({"padrec_constraint": 0}) == OFF and parse({"padrec_constraint": "No"}) == OFF
    assert parse({"padrec_constraint": 1, "padrec_num_items": None}).num_items is None  # null: the default


def test_server_defaults_fill_what_the_request_leaves_out():
    defaults = ListSpec(constraint=True, num_items=10, min_items=1, no_repeat=False)
    wide = ListLimits(32, 1000)
    assert parse({}, defaults, wide) == defaults
    assert parse({"padrec_num_items": 4}, defaults, wide) == ListSpec(True, 4, 4, False)
    assert parse({"padrec_min_items": 2, "padrec_num_items": None}, ListSpec(True), wide) == ListSpec(True, None, 2)
    assert parse({"padrec_constraint": 0}, defaults, wide) == OFF
    # with the constraint on server-wide, one bad key alone is enough to be refused
    refused({"padrec_min_items": math.inf}, "padrec_min_items", "1..32", defaults=defaults, limits=wide)


@pytest.mark.parametrize(
    "extra_args, key, words",
    [
        # the values that once killed the engine (int(inf) in add_request)
        ({"padrec_constraint": 1, "padrec_num_items": math.inf}, "padrec_num_items", ["1..32", "inf"]),
        ({"padrec_constraint": 1, "padrec_num_items": -math.inf}, "padrec_num_items", ["1..32"]),
        ({"padrec_constraint": 1, "padrec_min_items": math.inf}, "padrec_min_items", ["1..32"]),
        ({"padrec_constraint": 1, "padrec_num_items": math.nan}, "padrec_num_items", ["nan"]),
        # silent coercions that are errors now
        ({"padrec_constraint": 1, "padrec_num_items": 2.9}, "padrec_num_items", ["2.9"]),
        ({"padrec_constraint": "maybe"}, "padrec_constraint", ["true or false", "'maybe'"]),
        ({"padrec_constraint": math.nan}, "padrec_constraint", ["nan"]),
        ({"padrec_constraint": 2}, "padrec_constraint", ["got 2"]),
        ({"padrec_constraint": 1, "padrec_no_repeat": "maybe"}, "padrec_no_repeat", ["'maybe'"]),
        ({"padrec_constraint": 1, "padrec_num_itemz": 3}, "padrec_num_itemz", ["unknown", "padrec_num_items"]),
        ({"padrec_constraint": 1, "padrec_num_items": 33}, "padrec_num_items", ["1..32", "max_list_items"]),
        ({"padrec_constraint": 1, "padrec_num_items": 0}, "padrec_num_items", ["1..32"]),
        ({"padrec_constraint": 1, "padrec_num_items": True}, "padrec_num_items", ["True"]),
        ({"padrec_constraint": 1, "padrec_num_items": [1, 2]}, "padrec_num_items", ["[1, 2]"]),
        ({"padrec_constraint": 1, "padrec_num_items": "10abc"}, "padrec_num_items", ["'10abc'"]),
        ({"padrec_constraint": 1, "padrec_num_items": 10**30}, "padrec_num_items", ["1..32"]),
        ({"padrec_constraint": 1, "padrec_num_items": 2, "padrec_min_items": 5}, "padrec_min_items", ["5", "2"]),
        # no-repeat on a catalog too small for the list: refused, never quietly dropped
        (
            {"padrec_constraint": 1, "padrec_num_items": 9, "padrec_no_repeat": 1},
            "padrec_num_items",
            ["9 distinct items", "catalog has 8"],
        ),
        ({"padrec_constraint": 1, "padrec_min_items": 9, "padrec_no_repeat": 1}, "padrec_min_items", ["catalog has 8"]),
        # a list setting without the constraint would be ignored
        ({"padrec_no_repeat": 1}, "padrec_no_repeat", ["padrec_constraint"]),
        ({"padrec_constraint": 0, "padrec_num_items": 3}, "padrec_num_items", ["padrec_constraint"]),
    ],
)
def test_refused_values_name_the_key_and_what_it_takes(extra_args, key, words):
    refused(extra_args, key, *words)


def test_a_server_that_cannot_constrain_refuses_the_constraint_and_says_why():
    bare = ListLimits(32, None, "it has no item catalog (none at /models/t/padrec_catalog.json)")
    refused(
        {"padrec_constraint": 1}, "padrec_constraint", "cannot constrain", "/models/t/padrec_catalog.json", limits=bare
    )
    refused({}, "padrec_constraint", "no item catalog", defaults=ListSpec(constraint=True), limits=bare)
    assert parse({"padrec_constraint": 0}, limits=bare) == OFF


def test_repeats_allowed_lists_may_be_longer_than_the_catalog():
    assert parse({"padrec_constraint": 1, "padrec_num_items": 9, "padrec_no_repeat": 0}).num_items == 9


def test_extra_args_round_trip():
    for spec in (OFF, ListSpec(True, 3, 3, True), ListSpec(True, None, 2, False), ListSpec(True, 5, 1, False)):
        assert parse(spec.to_extra_args(), defaults=ListSpec(True, None, 4, True)) == spec  # no default leaks in
    assert parse(ListSpec(True, 5).to_extra_args(), defaults=ListSpec(True, 7, 4, True)) == ListSpec(True, 5)
    assert ListSpec(True, 3, 1, False).to_extra_args() == {
        "padrec_constraint": True,
        "padrec_num_items": 3,
        "padrec_no_repeat": False,
    }
    assert set(REQUEST_KEYS.values()) == {
        "padrec_constraint",
        "padrec_num_items",
        "padrec_min_items",
        "padrec_no_repeat",
        "padrec_exclude_items",
        "padrec_topk",
        "padrec_topk_verification",
    }


EXCLUDING = ListLimits(max_list_items=32, catalog_items=8, max_exclude_items=4)


def test_excluded_items_are_parsed_strictly():
    on = {"padrec_constraint": 1}
    spec = parse({**on, "padrec_exclude_items": [3, 1, 3, "7", 0.0]}, limits=EXCLUDING)
    assert spec.exclude_items == (3, 1, 7, 0)  # in order, duplicates dropped; numbers as padrec_num_items takes them
    assert parse({**on, "padrec_exclude_items": []}, limits=EXCLUDING).exclude_items == ()
    assert parse({**on, "padrec_exclude_items": None}, limits=EXCLUDING).exclude_items == ()  # null: none
    key = "padrec_exclude_items"
    refused({**on, key: 3}, key, "a list of item indices in 0..7", "got 3", limits=EXCLUDING)
    refused({**on, key: "[1, 2]"}, key, "a list", limits=EXCLUDING)
    refused({**on, key: [1, 8]}, key, "0..7", "got 8", limits=EXCLUDING)
    refused({**on, key: [-1]}, key, "got -1", limits=EXCLUDING)
    refused({**on, key: [True]}, key, "got True", limits=EXCLUDING)
    refused({**on, key: [1.5]}, key, "got 1.5", limits=EXCLUDING)
    refused({**on, key: [math.nan]}, key, "got nan", limits=EXCLUDING)
    refused({**on, key: [[1]]}, key, "got [1]", limits=EXCLUDING)
    refused({**on, key: [0, 1, 2, 3, 4]}, key, "5 distinct items", "max_exclude_items=4", limits=EXCLUDING)
    assert len(parse({**on, key: [0, 1, 2, 3, 3, 3]}, limits=EXCLUDING).exclude_items) == 4  # counted once each
    refused({**on, key: [1]}, key, "max_exclude_items=0")  # a server that excludes nothing
    refused({key: [1]}, key, "padrec_constraint", limits=EXCLUDING)  # without the constraint it would be ignored
    # the list must still find the items it needs
    refused(
        {**on, "padrec_num_items": 5, "padrec_no_repeat": 1, key: [0, 1, 2, 3]},
        key,
        "leaves 4 of the catalog's 8 items",
        "fewer than the 5",
        limits=EXCLUDING,
    )
    assert (
        parse({**on, "padrec_num_items": 4, "padrec_no_repeat": 1, key: [0, 1, 2, 3]}, limits=EXCLUDING).num_items == 4
    )
    tight = ListLimits(max_list_items=32, catalog_items=2, max_exclude_items=4)
    refused(
        {**on, key: [0, 1]}, key, "leaves 0", "fewer than the 1", limits=tight
    )  # repeats allowed: one item is enough
    assert parse({**on, "padrec_num_items": 9, key: [0]}, limits=tight).exclude_items == (0,)


def test_excluded_items_round_trip():
    spec = ListSpec(True, 3, 3, True, (5, 2))
    assert spec.to_extra_args()["padrec_exclude_items"] == [5, 2]
    assert parse(spec.to_extra_args(), limits=EXCLUDING) == spec
    assert "padrec_exclude_items" not in ListSpec(True, 3).to_extra_args()  # none: the key is left out


# -- top-K (padrec_topk) ------------------------------------------------------------------------------
ON = {"padrec_constraint": 1}


def test_topk_is_k_single_items():
    """A top-K request's candidates are one item each: num_items 1, given or implied, whatever the server's
    list defaults; a repeat-free list of one item needs no no_repeat."""
    assert parse({**ON, "padrec_topk": 5}) == ListSpec(True, 1, 1, False, (), 5)
    assert ListSpec(True, topk=5) == ListSpec(True, 1, 1, False, (), 5)  # num_items implied by the dataclass too
    assert parse({**ON, "padrec_topk": 8, "padrec_num_items": 1, "padrec_min_items": "1", "padrec_no_repeat": 0}) == (
        ListSpec(True, 1, topk=8)
    )
    assert parse({**ON, "padrec_topk": 1}).topk == 1
    assert parse({**ON, "padrec_topk": None}) == ListSpec(True)  # null: no top-K, as for every key
    list_defaults = ListSpec(constraint=True, num_items=10, min_items=10, no_repeat=True)
    assert parse({"padrec_topk": 3}, list_defaults, ListLimits(32, 100)) == ListSpec(True, 1, 1, False, (), 3)
    assert parse({}, list_defaults, ListLimits(32, 100)).topk is None


@pytest.mark.parametrize(
    "value, words",
    [
        (0, ["1..256", "max_topk", "got 0"]),
        (257, ["1..256", "got 257"]),
        (-3, ["got -3"]),
        (10**30, ["1..256"]),
        (2.5, ["got 2.5"]),
        (10.0, ["got 10.0"]),  # an integer only: stricter than padrec_num_items
        ("10", ["got '10'"]),
        (math.nan, ["got nan"]),
        (math.inf, ["got inf"]),
        (True, ["got True"]),
        ([10], ["got [10]"]),
    ],
)
def test_topk_takes_an_integer_in_1_to_max_topk_only(value, words):
    refused({**ON, "padrec_topk": value}, "padrec_topk", "padrec_topk must be an integer in 1..", *words)


def test_max_topk_is_the_servers():
    small = ListLimits(32, 1000, max_topk=5)
    assert parse({**ON, "padrec_topk": 5}, limits=small).topk == 5
    refused({**ON, "padrec_topk": 6}, "padrec_topk", "1..5 (this server's max_topk)", "got 6", limits=small)
    assert ListLimits(32, 1000).max_topk == 256


@pytest.mark.parametrize(
    "extra_args, key, words",
    [
        ({"padrec_topk": 3}, "padrec_topk", ["applies to constrained lists only", "padrec_constraint"]),
        ({"padrec_constraint": 0, "padrec_topk": 3}, "padrec_topk", ["padrec_constraint to true"]),
        ({**ON, "padrec_topk": 3, "padrec_num_items": 3}, "padrec_topk", ["padrec_num_items must be 1", "got 3"]),
        ({**ON, "padrec_topk": 3, "padrec_min_items": 2}, "padrec_topk", ["padrec_min_items must be 1", "got 2"]),
        ({**ON, "padrec_topk": 3, "padrec_no_repeat": "yes"}, "padrec_topk", ["padrec_no_repeat must be false"]),
        # a bad value of another key still gets its own message
        ({**ON, "padrec_topk": 3, "padrec_num_items": 2.5}, "padrec_num_items", ["1..32", "got 2.5"]),
        # K distinct items must exist: the catalog has 8
        ({**ON, "padrec_topk": 9}, "padrec_topk", ["padrec_topk=9", "the catalog has 8 items", "fewer than the 9"]),
    ],
)
def test_topk_rules_name_the_key(extra_args, key, words):
    refused(extra_args, key, *words)


def test_topk_needs_k_items_left_after_the_exclusions():
    key = "padrec_exclude_items"
    assert parse({**ON, "padrec_topk": 4, key: [0, 1, 2, 3]}, limits=EXCLUDING) == ListSpec(
        True, 1, exclude_items=(0, 1, 2, 3), topk=4
    )
    refused(
        {**ON, "padrec_topk": 5, key: [0, 1, 2, 3]},
        "padrec_topk",
        "padrec_topk=5: padrec_exclude_items leaves 4 of the catalog's 8 items, fewer than the 5 asked",
        limits=EXCLUDING,
    )
    assert parse({**ON, "padrec_topk": 8}, limits=EXCLUDING).topk == 8  # the whole catalog


def test_topk_round_trips():
    for spec in (ListSpec(True, topk=3), ListSpec(True, exclude_items=(5, 2), topk=6), ListSpec(True, topk=1)):
        for defaults in (ListSpec(True, None, 4, True), ListSpec(True, 7, 4, True), OFF):
            assert parse(spec.to_extra_args(), defaults, EXCLUDING) == spec
    assert ListSpec(True, exclude_items=(5,), topk=6).to_extra_args() == {
        "padrec_constraint": True,
        "padrec_num_items": 1,
        "padrec_no_repeat": False,
        "padrec_exclude_items": [5],
        "padrec_topk": 6,
    }
    assert "padrec_topk" not in ListSpec(True, 3).to_extra_args()


# any JSON value a client can send for a key (vllm_xargs: str | int | float | list of those)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=4,
)
keys = st.sampled_from([*REQUEST_KEYS.values(), "padrec_other", "something_else"])


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(keys, json_values | st.sampled_from(["1", "true", "off", "3", " 4 "]), max_size=4),
    st.builds(ListSpec, st.booleans(), st.none() | st.integers(1, 8), st.integers(1, 8), st.booleans()),
)
def test_fuzz_either_a_servable_spec_or_a_named_error(extra_args, defaults):
    """Whatever a client sends: a spec the masks can serve exactly, or a ListSpecError naming a padrec key."""
    if defaults.num_items is not None and defaults.min_items > defaults.num_items:
        defaults = ListSpec(defaults.constraint, defaults.num_items, 1, defaults.no_repeat)
    try:
        spec = parse(extra_args, defaults)
    except ListSpecError as error:
        assert error.key.startswith("padrec_") and error.key in str(error)
        return
    if not spec.constraint:
        assert spec == OFF
        return
    assert spec.num_items is None or 1 <= spec.num_items <= LIMITS.max_list_items
    assert 1 <= spec.min_items <= LIMITS.max_list_items and spec.min_items == (spec.num_items or spec.min_items)
    assert not spec.no_repeat or spec.min_items <= LIMITS.catalog_items
    value = extra_args.get("padrec_num_items")  # a client's number arrives exactly, or is refused
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        assert spec.num_items == value
    topk = extra_args.get("padrec_topk")  # K arrives as the integer sent, for single items, or is refused
    assert spec.topk == topk
    if topk is not None:
        assert type(topk) is int and 1 <= topk <= LIMITS.catalog_items - len(spec.exclude_items)
        assert (spec.num_items, spec.min_items, spec.no_repeat) == (1, 1, False)


# -- drafted top-K's verification rule (padrec_topk_verification) -------------------------------------------------
DRAFTING = ListLimits(max_list_items=32, catalog_items=8, topk_rules=("strict", "relaxed"))
STRICT_ONLY = ListLimits(max_list_items=32, catalog_items=8, topk_rules=("strict",))  # N = 1: greedy chains
VERIFY = "padrec_topk_verification"


def test_verification_is_strict_or_relaxed_on_a_server_that_drafts_top_k():
    for rule in ("strict", "relaxed"):
        spec = parse({**ON, "padrec_topk": 3, VERIFY: rule}, limits=DRAFTING)
        assert spec.topk_verification == rule and spec.topk == 3
        assert parse(spec.to_extra_args(), limits=DRAFTING) == spec  # round trip
    assert parse({**ON, "padrec_topk": 3}, limits=DRAFTING).topk_verification is None  # strict by default
    assert VERIFY not in ListSpec(True, topk=3).to_extra_args()
    assert parse({**ON, "padrec_topk": 3, VERIFY: "strict"}, limits=STRICT_ONLY).topk_verification == "strict"


@pytest.mark.parametrize(
    "extra_args, words, limits",
    [
        ({**ON, "padrec_topk": 3, VERIFY: "relaxed"}, ["this server does not draft top-K beams"], LIMITS),
        (
            {**ON, "padrec_topk": 3, VERIFY: "relaxed"},
            ["by ['strict'] only", "padrec.topk_draft_beams > 1"],
            STRICT_ONLY,
        ),
        ({**ON, VERIFY: "relaxed"}, ["applies to top-K requests only", "padrec_topk"], DRAFTING),
        ({VERIFY: "strict"}, ["applies to constrained lists only"], DRAFTING),
        ({**ON, "padrec_topk": 3, VERIFY: "Relaxed"}, ["one of ['strict', 'relaxed']", "got 'Relaxed'"], DRAFTING),
        ({**ON, "padrec_topk": 3, VERIFY: 1}, ["got 1"], DRAFTING),
        ({**ON, "padrec_topk": 3, VERIFY: ["relaxed"]}, ["got ['relaxed']"], DRAFTING),
    ],
)
def test_verification_refusals_name_the_key(extra_args, words, limits):
    refused(extra_args, VERIFY, *words, limits=limits)
