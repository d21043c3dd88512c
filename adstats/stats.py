"""The stats, defined once: dimensions, granularities and metrics as Spark column expressions.

The batch layer (exact, ``exact_stats``) and the speed layer (fresh, ``approximate_stats``) both
build their aggregations from the pieces here; they differ only in where events come from, how
distinct users are counted (exact count vs HLL estimate) and where rows go.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from adstats.events import CLICK, VIEW

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

# dimension name -> event field holding its id
DIMENSIONS: dict[str, str] = {"placement": "placement_id", "page": "page_id", "banner": "banner_id"}
GRANULARITY_SECONDS: dict[str, int] = {"hour": 3600, "day": 86400}
GRANULARITIES: tuple[str, ...] = tuple(GRANULARITY_SECONDS)
HLL_LG_K = 12  # ~1.6 % relative standard error; 4 KiB sketches (HLL_8)
# Output columns of every stats row, batch or speed.
KEY_COLUMNS: tuple[str, ...] = ("dimension", "dim_id", "granularity", "period_start")
METRIC_COLUMNS: tuple[str, ...] = ("views", "clicks", "distinct_users", "users_sketch")


@dataclass(frozen=True)
class CountMetric:
    """An additive metric: counted from events, summed when partial rows are merged."""

    name: str
    count: Callable[[], Column]

    def merge(self) -> Column:
        from pyspark.sql import functions as F

        return F.sum(self.name).alias(self.name)


def _count_event_type(event_type: int) -> Callable[[], Column]:
    def count() -> Column:
        from pyspark.sql import functions as F

        return F.count_if(F.col("event_type") == event_type).cast("long")

    return count


COUNT_METRICS: tuple[CountMetric, ...] = (
    CountMetric("views", _count_event_type(VIEW)),
    CountMetric("clicks", _count_event_type(CLICK)),
)


def ctr(views: int | None, clicks: int | None) -> float | None:
    """Click-through rate: clicks / views, None when there are no views."""
    if not views:
        return None
    return (clicks or 0) / views


def ctr_column(views: Column, clicks: Column) -> Column:
    """Spark twin of :func:`ctr`."""
    from pyspark.sql import functions as F

    return F.when(views > 0, clicks / views)


def explode_dimensions(events: DataFrame, extra: Iterable[str] = ()) -> DataFrame:
    """One row per (event, dimension): ``dimension`` and ``dim_id`` replace the id fields, so
    every dimension is aggregated in a single pass over the events."""
    from pyspark.sql import functions as F

    pairs = F.array(*(
        F.struct(F.lit(name).alias("dimension"), F.col(field).alias("dim_id"))
        for name, field in DIMENSIONS.items()
    ))
    return (
        events.select("timestamp", "event_type", "user_id", *extra, F.explode(pairs).alias("_d"))
        .select("_d.dimension", "_d.dim_id", "timestamp", "event_type", "user_id", *extra)
    )


def period_start(timestamp: Column, granularity: str) -> Column:
    """Start of the UTC hour/day holding ``timestamp`` (epoch seconds), as a Spark timestamp.
    An event at exactly 13:00:00 belongs to the 13:00 hour."""
    from pyspark.sql import functions as F

    seconds = GRANULARITY_SECONDS[granularity]
    return F.timestamp_seconds(timestamp - F.pmod(timestamp, F.lit(seconds)))


def with_period(rows: DataFrame, granularity: str, source: str = "timestamp") -> DataFrame:
    """Add ``granularity`` and ``period_start`` (from epoch seconds or a timestamp column)."""
    from pyspark.sql import functions as F

    ts = F.col(source)
    if source != "timestamp":
        ts = F.unix_seconds(ts)
    return rows.withColumn("granularity", F.lit(granularity)).withColumn(
        "period_start", period_start(ts, granularity)
    )


def users_sketch() -> Column:
    """The mergeable distinct-users sketch stored with every row (Apache DataSketches HLL)."""
    from pyspark.sql import functions as F

    return F.hll_sketch_agg("user_id", HLL_LG_K).alias("users_sketch")


def user_dictionary(events: DataFrame) -> DataFrame:
    """``user_id`` -> ``user_number`` (a long), unique per user, for exact bitmaps.

    Checkpointed so that every use within a job sees the same numbering (the numbers come from
    ``monotonically_increasing_id``, which a recomputation could assign differently)."""
    from pyspark.sql import functions as F

    return (
        events.select("user_id").distinct()
        .withColumn("user_number", F.monotonically_increasing_id())
        .localCheckpoint(eager=True)
    )


def _bitmap_cells(events: DataFrame) -> DataFrame:
    """Per (dimension, id, hour, bitmap bucket): counts, an exact bitmap of the users' numbers
    and their HLL sketch. A bucket covers 32,768 user numbers, so there are few cells."""
    from pyspark.sql import functions as F

    numbered = events.join(user_dictionary(events), "user_id")
    rows = with_period(explode_dimensions(numbered, extra=("user_number",)), "hour")
    return rows.groupBy(*KEY_COLUMNS, F.bitmap_bucket_number("user_number").alias("_bucket")).agg(
        *(m.count().alias(m.name) for m in COUNT_METRICS),
        F.bitmap_construct_agg(F.bitmap_bit_position("user_number")).alias("_users_bitmap"),
        users_sketch(),
    )


def _roll_up_cells(cells: DataFrame) -> DataFrame:
    """Hourly cells -> daily cells: counts summed, bitmaps OR-ed, sketches unioned."""
    from pyspark.sql import functions as F

    return with_period(cells, "day", source="period_start").groupBy(*KEY_COLUMNS, "_bucket").agg(
        *(m.merge() for m in COUNT_METRICS),
        F.bitmap_or_agg("_users_bitmap").alias("_users_bitmap"),
        F.hll_union_agg("users_sketch").alias("users_sketch"),
    )


def _finish_exact(cells: DataFrame) -> DataFrame:
    from pyspark.sql import functions as F

    return cells.groupBy(*KEY_COLUMNS).agg(
        *(m.merge() for m in COUNT_METRICS),
        F.sum(F.bitmap_count("_users_bitmap")).cast("long").alias("distinct_users"),
        F.hll_union_agg("users_sketch").alias("users_sketch"),
    )


def exact_stats(events: DataFrame, granularities: Iterable[str] = GRANULARITIES) -> DataFrame:
    """EXACT stats of typed events for every dimension and the given granularities, in one pass.

    Distinct users are counted exactly with Spark's bitmap functions: each user gets a number,
    each (dimension, id, hour) cell a bitmap of its users' numbers; a day ORs its hours'
    bitmaps, so days are rolled up from the hourly cells, never from the events again.
    (A first version grouped by (dimension, id, hour, user): 5x slower, see docs/benchmarks.md.)
    """
    granularities = list(granularities)
    unknown = set(granularities) - set(GRANULARITIES)
    if unknown or not granularities:
        raise ValueError(f"granularities {granularities}: expected some of {GRANULARITIES}")
    hourly_cells = _bitmap_cells(events).persist()
    outputs = []
    if "hour" in granularities:
        outputs.append(_finish_exact(hourly_cells))
    if "day" in granularities:
        outputs.append(_finish_exact(_roll_up_cells(hourly_cells)))
    result = outputs[0]
    for other in outputs[1:]:
        result = result.unionByName(other)
    return result.select(*KEY_COLUMNS, *METRIC_COLUMNS)


def approximate_stats(events: DataFrame, event_time: str = "event_time") -> DataFrame:
    """FRESH hourly stats (speed layer) of typed events carrying an ``event_time`` timestamp:
    counts per (dimension, id, hour) and the users sketch; distinct users is the sketch's
    estimate. Grouping by ``window(event_time)`` lets a streaming query bound its state and
    drop events later than its watermark."""
    from pyspark.sql import functions as F

    rows = explode_dimensions(events, extra=(event_time,))
    hour = F.window(event_time, f"{GRANULARITY_SECONDS['hour']} seconds")
    return (
        rows.groupBy("dimension", "dim_id", hour.alias("_window"))
        .agg(*(m.count().alias(m.name) for m in COUNT_METRICS), users_sketch())
        .withColumn("granularity", F.lit("hour"))
        .withColumn("period_start", F.col("_window.start"))
        .withColumn("distinct_users", F.hll_sketch_estimate("users_sketch"))
        .select(*KEY_COLUMNS, *METRIC_COLUMNS)
    )
