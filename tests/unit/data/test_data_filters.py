"""LaionFilter: each threshold at its boundary, aliases, the missing-field policy, configuration errors."""

from __future__ import annotations

import math

import pytest

from zsnr.data import LaionFilter

OK = {"original_width": 800, "original_height": 600, "punsafe": 0.01, "pwatermark": 0.1, "aesthetic": 5.5}


def check(meta_override=None, caption="a cat", **filter_kwargs):
    return LaionFilter(**filter_kwargs).check({**OK, **(meta_override or {})}, caption)


def test_a_passing_sample_is_kept():
    assert check() is None


@pytest.mark.parametrize(
    ("field", "kept", "rejected", "name"),
    [
        ("original_width", 512, 511, "width"),
        ("original_height", 512, 511, "height"),
        ("punsafe", 0.0999, 0.1, "punsafe"),  # SD 2: punsafe < 0.1 (strict)
        ("pwatermark", 0.4999, 0.5, "pwatermark"),
        ("aesthetic", 4.5, 4.4999, "aesthetic"),  # aesthetic >= 4.5
    ],
)
def test_each_threshold_at_its_boundary(field, kept, rejected, name):
    assert check({field: kept}) is None
    assert check({field: rejected}) == name


def test_caption_must_be_present_and_not_blank():
    assert check(caption=None) == "caption"
    assert check(caption="  \n") == "caption"
    assert check(caption=None, require_caption=False) is None


@pytest.mark.parametrize("absent", [None, float("nan"), "n/a"])
def test_missing_field_policy(absent):
    meta = {**OK, "punsafe": absent}
    assert LaionFilter().check(meta, "x") == "missing_punsafe"
    assert LaionFilter(on_missing="accept").check(meta, "x") is None
    del meta["punsafe"]
    assert LaionFilter().check(meta, "x") == "missing_punsafe"


def test_aliases_and_fallbacks():
    meta = {"width": 600, "height": 700, "PUNSAFE": 0.0, "pwatermark": 0.0, "AESTHETIC_SCORE": 6.0}
    assert LaionFilter().check(meta, "x") is None
    # original_width wins over width when both are there
    assert LaionFilter().check({**meta, "original_width": 100}, "x") == "width"
    # numbers written as strings (CSV manifests) still compare as numbers
    assert LaionFilter().check({**OK, "original_width": "600"}, "x") is None


def test_none_turns_a_filter_off():
    f = LaionFilter(min_width=None, max_punsafe=None)
    assert f.check({**OK, "original_width": 10, "punsafe": 0.9}, "x") is None
    assert "width" not in f.counter_names() and "punsafe" not in f.counter_names()
    assert LaionFilter.off().check({}, "x") is None and LaionFilter.off().check({}, "") == "caption"
    assert not LaionFilter.off().needs_metadata and LaionFilter().needs_metadata


def test_counter_names_cover_every_result():
    f = LaionFilter()
    names = set(f.counter_names())
    results = {check({k: v}) for k, v in [("original_width", 1), ("punsafe", 1.0), ("aesthetic", 0.0)]}
    results |= {f.check({}, "x"), f.check(OK, "")}
    assert results <= names


def test_from_any_and_errors():
    assert LaionFilter.from_any({"min_width": 256}).min_width == 256
    assert LaionFilter.from_any(None) == LaionFilter()
    with pytest.raises(ValueError, match="unknown LaionFilter fields.*min_widht"):
        LaionFilter.from_any({"min_widht": 256})
    with pytest.raises(ValueError, match="on_missing='drop'"):
        LaionFilter(on_missing="drop")
    with pytest.raises(TypeError):
        LaionFilter.from_any(3)
    assert math.isclose(LaionFilter.from_any({"max_punsafe": 0.2}).max_punsafe, 0.2)
