"""Distinct-users sketches on the serving side: estimates, bounds and unions in pure Python.

Both layers store an Apache DataSketches HLL sketch (lgK = 12, written by Spark's
``hll_sketch_agg``) with every row. Here the ``datasketches`` package reads them: an estimate
with bounds at 2 standard deviations (~95 %), and unions of several sketches (an hour range, a
day assembled from its hours, a multi-day ranking), which give the same estimate as Spark's
``hll_union_agg`` on the same sketches (tests/test_serving.py checks it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from datasketches import hll_sketch, hll_union

from adstats.stats import HLL_LG_K

NUM_STD_DEV = 2  # bounds at 2 standard deviations: ~95.4 % confidence

SketchLike = bytes | bytearray | memoryview | hll_sketch


@dataclass(frozen=True, slots=True)
class Estimate:
    """A distinct count: ``value`` with ``low <= value <= high``."""

    value: int
    low: int
    high: int

    @classmethod
    def exact(cls, value: int) -> Estimate:
        return cls(value, value, value)


def java_round(x: float) -> int:
    """Round half up like Java's ``Math.round`` (Spark's ``hll_sketch_estimate``)."""
    return math.floor(x + 0.5)


class CorruptSketch(ValueError):
    """Stored sketch bytes that ``datasketches`` cannot read (a foreign or damaged value)."""


def load(sketch: SketchLike) -> hll_sketch:
    """A sketch object from its serialized bytes (or the object itself)."""
    if isinstance(sketch, hll_sketch):
        return sketch
    try:
        return hll_sketch.deserialize(bytes(sketch))
    except Exception as exc:  # the C++ binding raises RuntimeError/ValueError variants
        raise CorruptSketch(f"unreadable HLL sketch ({len(sketch)} bytes): {exc}") from exc


def _estimate_of(obj: hll_sketch | hll_union) -> Estimate:
    if obj.is_empty():
        return Estimate(0, 0, 0)
    value = java_round(obj.get_estimate())
    low = max(0, math.floor(obj.get_lower_bound(NUM_STD_DEV)))
    high = math.ceil(obj.get_upper_bound(NUM_STD_DEV))
    return Estimate(value, min(low, value), max(high, value))


def estimate(sketch: SketchLike) -> Estimate:
    """Estimate and 2-sd bounds of one serialized sketch."""
    return _estimate_of(load(sketch))


def union(sketches: Iterable[SketchLike], lg_k: int = HLL_LG_K) -> hll_union:
    """The union (``hll_union(lg_k)``) of serialized sketches or sketch objects."""
    result = hll_union(lg_k)
    for sketch in sketches:
        result.update(load(sketch))
    return result


def union_estimate(sketches: Iterable[SketchLike], lg_k: int = HLL_LG_K) -> Estimate:
    """Estimate and 2-sd bounds of the union of sketches (0 for none)."""
    return _estimate_of(union(sketches, lg_k))


def union_sketch(sketches: Iterable[SketchLike], lg_k: int = HLL_LG_K) -> hll_sketch:
    """The union as a sketch object (HLL_8, like Spark's), to union again later."""
    from datasketches import tgt_hll_type

    return union(sketches, lg_k).get_result(tgt_hll_type.HLL_8)
