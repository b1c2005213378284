"""LAION metadata filters, applied to a sample's json before its image is decoded.

Stable Diffusion 2 trained on LAION-5B filtered to original size >= 512 px, punsafe < 0.1 and aesthetic
>= 4.5; Lin et al. fine-tune on data "filtered like SD's". The watermark filter (pwatermark < 0.5) is the
one SD 1 used. Every threshold is configurable and `None` turns a filter off.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

MISSING_POLICIES = ("reject", "accept")


@dataclass
class LaionFilter:
    """Thresholds on LAION json fields; `check` returns the name of the first failed filter or None.

    A field that is absent, null or NaN is "missing": `on_missing="reject"` drops the sample (counted as
    `missing_<filter>`), `"accept"` lets it through that filter. Each `*_keys` lists the json names tried in
    order (img2dataset writes `original_width`; LAION parquet columns are upper-case in some releases).
    """

    min_width: int | None = 512
    min_height: int | None = 512
    max_punsafe: float | None = 0.1  # keep when punsafe < max_punsafe
    max_pwatermark: float | None = 0.5  # keep when pwatermark < max_pwatermark
    min_aesthetic: float | None = 4.5  # keep when aesthetic >= min_aesthetic
    require_caption: bool = True
    on_missing: str = "reject"
    width_keys: Sequence[str] = ("original_width", "width")
    height_keys: Sequence[str] = ("original_height", "height")
    punsafe_keys: Sequence[str] = ("punsafe", "PUNSAFE")
    pwatermark_keys: Sequence[str] = ("pwatermark", "PWATERMARK")
    aesthetic_keys: Sequence[str] = ("aesthetic", "AESTHETIC_SCORE", "aesthetic_score")
    _rules: list = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.on_missing not in MISSING_POLICIES:
            raise ValueError(
                f"LaionFilter.on_missing={self.on_missing!r} is not one of {MISSING_POLICIES}: "
                "choose 'reject' (drop samples lacking a field) or 'accept' (let them through)."
            )
        # (name, json keys, threshold, keep-test(value, threshold)); operator functions pickle into workers
        rules = [
            ("width", self.width_keys, self.min_width, operator.ge),
            ("height", self.height_keys, self.min_height, operator.ge),
            ("punsafe", self.punsafe_keys, self.max_punsafe, operator.lt),
            ("pwatermark", self.pwatermark_keys, self.max_pwatermark, operator.lt),
            ("aesthetic", self.aesthetic_keys, self.min_aesthetic, operator.ge),
        ]
        self._rules = [(name, tuple(keys), t, keep) for name, keys, t, keep in rules if t is not None]

    @property
    def needs_metadata(self) -> bool:
        """True when some threshold reads the json (so a sample without json cannot be judged)."""
        return bool(self._rules)

    @classmethod
    def from_any(cls, value: LaionFilter | Mapping[str, Any] | None) -> LaionFilter:
        """Accept a LaionFilter, its keyword arguments (as Hydra passes them) or None (the defaults)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            names = {f.name for f in fields(cls) if f.init}
            unknown = sorted(set(value) - names)
            if unknown:
                raise ValueError(f"unknown LaionFilter fields {unknown}; valid fields are {sorted(names)}")
            return cls(**dict(value))
        raise TypeError(f"filters must be a LaionFilter or a dict of its fields, got {type(value).__name__}")

    @classmethod
    def off(cls) -> LaionFilter:
        """A filter that only asks for a caption (used for precomputed-latent shards)."""
        return cls(None, None, None, None, None, require_caption=True)

    def check(self, meta: Mapping[str, Any], caption: str | None) -> str | None:
        """Return None to keep the sample, else the counter name of the filter that rejects it."""
        if self.require_caption and (caption is None or not caption.strip()):
            return "caption"
        for name, keys, threshold, keep in self._rules:
            value = _lookup(meta, keys)
            if value is None:
                if self.on_missing == "reject":
                    return f"missing_{name}"
                continue
            if not keep(value, threshold):
                return name
        return None

    def counter_names(self) -> list[str]:
        """Every name `check` can return, so logs show zeros too."""
        names = ["caption"] if self.require_caption else []
        for name, *_ in self._rules:
            names += [name, f"missing_{name}"]
        return names


def _lookup(meta: Mapping[str, Any], keys: tuple[str, ...]) -> float | None:
    for key in keys:
        value = meta.get(key)
        if value is None or isinstance(value, bool):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if not math.isnan(number):
            return number
    return None
