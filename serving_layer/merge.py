"""One answer from two views: the exact batch views and the fresh speed views, merged at query time.

No Spark here: the serving layer reads Cassandra with the driver's prepared statements and merges
rows in Python (docs/serving.md has the rules with examples).

Range: ``[start, end)`` on ``period_start`` (ISO-8601, UTC; a naive time is UTC). A period is in
the answer when it STARTS inside the range, so ``day`` rows from ``2026-02-01T12`` begin with
2026-02-02.

Merge rules, per (dimension, id):

* **hour** - the hour recorded in ``batch_periods`` (granularity hour): the batch row, exact
  (``source: batch``, ``exact: true``; a requested id without a row there had no events: a zero
  row). Not recorded: the speed row if there is one (``source: speed``, ``exact: false``,
  ``distinct_users`` = sketch estimate, low/high = HLL bounds at 2 sd); neither: no row.
  Batch rows of an hour that is not recorded yet (a run in progress) are ignored.
* **day** - the day recorded in ``batch_periods`` (granularity day): the daily batch row, exact.
  Not recorded: assembled from the day's hours (merged as above): counts summed, sketches
  unioned (``hll_union(12)``), source ``batch``/``speed`` when only that layer contributed,
  ``mixed`` when both did.
* An assembled row (a day from its hours, a ``top`` entry over several periods) has
  ``counts_exact`` only when EVERY period it covers is recorded by the batch layer (then an id's
  missing hour is a known zero), and is ``exact`` (distinct users too) only when, in addition,
  at most one of its periods has events and that period's row is exact: distinct users of
  several periods are a sketch union, an estimate. Its low/high are the union's 2-sd bounds,
  tightened by what is certain: at least the largest exact period count, at most the sum of
  the periods' counts when all are exact.
* Exact rows have ``distinct_users_low == distinct_users_high == distinct_users``.
* ``ctr`` = clicks / views, null when views = 0 (``adstats.stats.ctr``).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from cassandra.cluster import ResponseFuture, Session
from cassandra.query import PreparedStatement

from adstats.config import Settings, settings
from adstats.stats import DIMENSIONS, GRANULARITIES, ctr
from serving_layer import sketches
from serving_layer.views import (
    BATCH_TABLE,
    LATE_TABLE,
    PERIODS_TABLE,
    RECONCILIATION_TABLE,
    SPEED_TABLE,
    bucket_of,
)

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
# Largest ranges served: a month of hourly rows, a year (leap) of daily rows or rankings.
MAX_RANGE: dict[str, timedelta] = {"hour": timedelta(days=31), "day": timedelta(days=366)}
MAX_TOP_RANGE = timedelta(days=366)
METRICS: tuple[str, ...] = ("views", "clicks", "ctr", "distinct_users")
SOURCES: tuple[str, ...] = ("batch", "speed", "mixed")
# Times outside this window are refused (keeps datetime arithmetic and Cassandra timestamps sane).
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
_IN_FLIGHT = 128  # concurrent queries per fan-out
# A recorded period stays recorded (the batch layer only adds to batch_periods), so the reader
# remembers recorded periods for a while and then skips the batch_periods and speed_stats
# reads of windows that are all recorded: 1 query instead of 3 for historical ranges. The TTL
# bounds how long a period removed by hand (to force a recompute) keeps being served as exact.
RECORDED_TTL_S = 60.0
_RECORDED_MAX = 500_000  # entries before the memo is cleared
T = TypeVar("T")
Queries = list[tuple[PreparedStatement, tuple]]


class QueryError(ValueError):
    """A request the serving layer refuses (bad dimension, id, granularity or range)."""


# --------------------------------------------------------------------------------------------
# Rows


@dataclass(frozen=True, slots=True)
class StatsRow:
    """One served row: the stats of one id of one dimension in one period."""

    dimension: str
    id: str
    granularity: str
    period_start: datetime
    views: int
    clicks: int
    ctr: float | None
    distinct_users: int
    distinct_users_low: int
    distinct_users_high: int
    source: str  # batch | speed | mixed
    exact: bool  # every number of the row is exact
    counts_exact: bool  # views, clicks (and so ctr) are exact

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (``period_start`` as ``2026-02-01T14:00:00Z``); built by hand, because
        ``dataclasses.asdict`` costs ~20 us a row."""
        return {
            "dimension": self.dimension, "id": self.id, "granularity": self.granularity,
            "period_start": iso(self.period_start), "views": self.views,
            "clicks": self.clicks, "ctr": self.ctr, "distinct_users": self.distinct_users,
            "distinct_users_low": self.distinct_users_low,
            "distinct_users_high": self.distinct_users_high, "source": self.source,
            "exact": self.exact, "counts_exact": self.counts_exact,
        }


@dataclass(frozen=True, slots=True)
class TopEntry:
    rank: int
    id: str
    views: int
    clicks: int
    ctr: float | None
    distinct_users: int
    distinct_users_low: int
    distinct_users_high: int
    source: str
    exact: bool
    counts_exact: bool


@dataclass(frozen=True, slots=True)
class TopResult:
    dimension: str
    metric: str
    start: datetime
    end: datetime
    hours: int  # hourly periods the range was assembled from
    days: int  # daily periods the range was assembled from
    complete: bool  # every period of the range is recorded by the batch layer
    distinct_users_exact: bool  # every entry's distinct_users is exact
    note: str
    rows: list[TopEntry] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["start"], d["end"] = iso(self.start), iso(self.end)
        return d


@dataclass(slots=True)
class _Cell:
    """A (period, id) while merging; carries its sketches for unions."""

    period_start: datetime
    dim_id: str
    views: int
    clicks: int
    users: sketches.Estimate
    source: str
    exact: bool
    counts_exact: bool
    sketches: tuple = ()  # serialized sketches or sketch objects; () for a zero row
    floor: int = 0  # a certain lower bound on distinct users
    ceiling: int | None = None  # a certain upper bound, None when unknown

    def empty(self) -> bool:
        return self.views == 0 and self.clicks == 0 and self.users.high == 0

    def row(self, dimension: str, granularity: str) -> StatsRow:
        return StatsRow(
            dimension, self.dim_id, granularity, self.period_start, self.views, self.clicks,
            ctr(self.views, self.clicks), self.users.value, self.users.low, self.users.high,
            self.source, self.exact, self.counts_exact,
        )


def _exact_cell(start: datetime, dim_id: str, views: int, clicks: int, users: int,
                sketch: bytes | None) -> _Cell:
    return _Cell(start, dim_id, views, clicks, sketches.Estimate.exact(users), "batch", True, True,
                 (sketch,) if sketch else (), users, users)


def _speed_cell(start: datetime, dim_id: str, views: int, clicks: int, users: int,
                sketch: bytes | None) -> _Cell:
    if sketch:
        est = sketches.estimate(sketch)
        est = sketches.Estimate(users, min(est.low, users), max(est.high, users))
    else:  # a speed row without a sketch: only its own estimate is known
        est = sketches.Estimate(users, users, users)
    floor = 1 if views or clicks else 0
    return _Cell(start, dim_id, views, clicks, est, "speed", False, False,
                 (sketch,) if sketch else (), floor, None)


def _combine(period_start: datetime, dim_id: str, cells: Sequence[_Cell], complete: bool) -> _Cell:
    """Several periods of one id as one cell (see the module doc for exactness and bounds)."""
    views = sum(c.views for c in cells)
    clicks = sum(c.clicks for c in cells)
    kinds = {c.source for c in cells}
    source = "mixed" if len(kinds) > 1 or "mixed" in kinds else next(iter(kinds), "batch")
    busy = [c for c in cells if not c.empty()]
    floor = max((c.floor for c in cells), default=0)
    ceilings = [c.ceiling for c in cells]
    ceiling = sum(ceilings) if all(x is not None for x in ceilings) else None  # type: ignore[misc]
    counts_exact = complete and all(c.counts_exact for c in cells)
    if counts_exact and len(busy) <= 1 and all(c.exact for c in busy):
        users = busy[0].users if busy else sketches.Estimate.exact(0)
        return _Cell(period_start, dim_id, views, clicks, users, source, True, True,
                     tuple(s for c in busy for s in c.sketches), users.value, users.value)
    parts = [s for c in cells for s in c.sketches]
    union = sketches.union_estimate(parts)
    low, high = max(union.low, floor), union.high if ceiling is None else min(union.high, ceiling)
    if low > high:  # the 2-sd bounds missed what is certain: keep the certain bounds
        low, high = floor, ceiling if ceiling is not None else max(floor, union.high)
    value = min(max(union.value, low), high)
    return _Cell(period_start, dim_id, views, clicks, sketches.Estimate(value, low, high), source,
                 False, counts_exact, tuple(parts), floor, ceiling)


# --------------------------------------------------------------------------------------------
# Time


def iso(value: datetime) -> str:
    """``2026-02-01T14:00:00Z``"""
    return as_utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def parse_time(text: str) -> datetime:
    """ISO-8601 date or date-time -> aware UTC datetime (a time without offset is UTC):
    ``2026-02-01``, ``2026-02-01T13``, ``2026-02-01T13:00:00Z``, ``…+02:00``."""
    value = (text or "").strip()
    try:
        parsed = as_utc(datetime.fromisoformat(value))
    except (ValueError, OverflowError) as exc:
        raise QueryError(f"not an ISO-8601 time: {text!r} (e.g. 2026-02-01T13:00:00Z)") from exc
    if not EARLIEST <= parsed < LATEST:
        raise QueryError(f"time {text!r} is outside {EARLIEST:%Y}..{LATEST:%Y}")
    return parsed


def floor_to(value: datetime, step: timedelta) -> datetime:
    value = as_utc(value)
    seconds = int(step.total_seconds())
    epoch = int(value.timestamp()) // seconds * seconds
    return datetime.fromtimestamp(epoch, UTC)


def ceil_to(value: datetime, step: timedelta) -> datetime:
    floored = floor_to(value, step)
    return floored if floored == as_utc(value) else floored + step


def periods(granularity: str, start: datetime, end: datetime) -> list[datetime]:
    """Period starts in ``[start, end)``."""
    step = HOUR if granularity == "hour" else DAY
    out, p = [], ceil_to(start, step)
    while p < end:
        out.append(p)
        p += step
    return out


def check_range(granularity: str, start: datetime, end: datetime,
                limit: timedelta | None = None) -> None:
    limit = limit or MAX_RANGE[granularity]
    if end < start:
        raise QueryError(f"empty range: from {iso(start)} is after to {iso(end)}")
    if end - start > limit:
        raise QueryError(f"range too large: {(end - start) / DAY:g} days > {limit.days} days "
                         f"(granularity {granularity})")


# --------------------------------------------------------------------------------------------
# Validation

ID_MAX_LENGTH = 64
MAX_IDS = 100
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-")


def check_dimension(dimension: str) -> None:
    if dimension not in DIMENSIONS:
        raise QueryError(f"unknown dimension {dimension!r}: expected one of {list(DIMENSIONS)}")


def check_granularity(granularity: str) -> None:
    if granularity not in GRANULARITIES:
        raise QueryError(f"unknown granularity {granularity!r}: expected one of "
                         f"{list(GRANULARITIES)}")


def check_ids(ids: Iterable[str] | None) -> list[str] | None:
    """The ids, deduplicated in order; None means every id."""
    if ids is None:
        return None
    out = list(dict.fromkeys(ids))
    if not out:
        return None
    if len(out) > MAX_IDS:
        raise QueryError(f"too many ids: {len(out)} > {MAX_IDS}")
    for i in out:
        if not isinstance(i, str) or not i or len(i) > ID_MAX_LENGTH or not set(i) <= _ID_CHARS \
                or not i[0].isalnum():
            raise QueryError(f"invalid id {i!r}: 1-{ID_MAX_LENGTH} characters of A-Z a-z 0-9 "
                             "_ . : - starting with a letter or digit")
    return out


# --------------------------------------------------------------------------------------------
# Reading


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC)  # the driver returns naive UTC datetimes


class StatsReader:
    """Merged reads over one Cassandra session (prepared once; thread-safe like the session).

    The API keeps one for its lifetime; :func:`stats` and :func:`top` make one per call."""

    def __init__(self, session: Session) -> None:
        self.session = session
        prepare = session.prepare
        cols = "period_start, dim_id, views, clicks, distinct_users"
        where = "WHERE dimension=? AND granularity=? AND bucket=? AND period_start>=? " \
                "AND period_start<?"
        self._batch = prepare(f"SELECT {cols} FROM {BATCH_TABLE} {where}")
        self._batch_sk = prepare(f"SELECT {cols}, users_sketch FROM {BATCH_TABLE} {where}")
        self._speed = prepare(f"SELECT {cols}, users_sketch FROM {SPEED_TABLE} {where}")
        self._periods = prepare(
            f"SELECT period_start FROM {PERIODS_TABLE} WHERE granularity=? AND bucket=? "
            "AND period_start>=? AND period_start<?")
        self._latest = prepare(
            f"SELECT period_start FROM {PERIODS_TABLE} WHERE granularity=? AND bucket=? "
            "ORDER BY period_start DESC LIMIT 1")
        self._partitions = prepare(f"SELECT DISTINCT granularity, bucket FROM {PERIODS_TABLE}")
        self._version = prepare("SELECT release_version FROM system.local")
        self._reconciliation = prepare(
            f"SELECT * FROM {RECONCILIATION_TABLE} WHERE granularity=? AND bucket=? "
            "AND period_start>=? AND period_start<?")
        self._late = prepare(
            f"SELECT period_start, events FROM {LATE_TABLE} WHERE bucket=? "
            "AND period_start>=? AND period_start<?")
        self._recorded: dict[tuple[str, datetime], float] = {}  # (granularity, start) -> expiry

    def _known_recorded(self, granularity: str, starts: list[datetime], now: float) -> bool:
        memo = self._recorded
        return bool(starts) and all(memo.get((granularity, s), 0.0) > now for s in starts)

    def _remember(self, granularity: str, starts: Iterable[datetime], now: float) -> None:
        if len(self._recorded) > _RECORDED_MAX:
            self._recorded = {}
        expiry = now + RECORDED_TTL_S
        for s in starts:
            self._recorded[(granularity, s)] = expiry

    # -- plumbing

    # The merges below are generators that yield the queries they need and get their rows back
    # ("sans I/O"): _drive runs them with blocking waits (library, CLI), _adrive on an asyncio
    # loop (the API), both with every query of a step in flight at once (execute_async).

    def _fan_out(self, queries: Queries) -> list[list]:
        """Run queries concurrently (``execute_async``), results in order."""
        results: list[list] = []
        for i in range(0, len(queries), _IN_FLIGHT):
            futures: list[ResponseFuture] = [
                self.session.execute_async(stmt, params)
                for stmt, params in queries[i:i + _IN_FLIGHT]]
            results.extend(list(f.result()) for f in futures)
        return results

    def _drive(self, steps: Generator[Queries, list[list], T]) -> T:
        try:
            queries = next(steps)
            while True:
                queries = steps.send(self._fan_out(queries))
        except StopIteration as done:
            return done.value

    def _fetch(self, loop: asyncio.AbstractEventLoop, stmt: PreparedStatement,
               params: tuple) -> asyncio.Future:
        """All rows of one query as an asyncio future (the driver's callbacks, every page)."""
        future: asyncio.Future = loop.create_future()
        response = self.session.execute_async(stmt, params)
        rows: list = []

        def settle(value: object, failed: bool) -> None:
            if not future.done():
                (future.set_exception if failed else future.set_result)(value)

        def on_page(page: list) -> None:
            rows.extend(page)
            if response.has_more_pages:
                response.start_fetching_next_page()
            else:
                loop.call_soon_threadsafe(settle, rows, False)

        response.add_callbacks(on_page, lambda exc: loop.call_soon_threadsafe(settle, exc, True))
        return future

    async def _adrive(self, steps: Generator[Queries, list[list], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            queries = next(steps)
            while True:
                results: list[list] = []
                for i in range(0, len(queries), _IN_FLIGHT):
                    results += await asyncio.gather(*(
                        self._fetch(loop, stmt, params)
                        for stmt, params in queries[i:i + _IN_FLIGHT]))
                queries = steps.send(results)
        except StopIteration as done:
            return done.value

    def _hour_cells(self, dimension: str, windows: list[tuple[datetime, datetime]],
                    ids: list[str] | None, with_sketches: bool,
                    ) -> Generator[Queries, list[list], tuple[dict, set[datetime]]]:
        """Merged hourly cells {(hour, id): cell} of windows that each lie within one UTC day,
        and the hours recorded by the batch layer."""
        batch = self._batch_sk if with_sketches else self._batch
        now = time.monotonic()
        queries: Queries = []
        plan = []  # per window: its hours and whether they are all known to be recorded
        for lo, hi in windows:
            bucket = bucket_of("hour", lo)
            hours = periods("hour", lo, hi)
            known = self._known_recorded("hour", hours, now)
            queries.append((batch, (dimension, "hour", bucket, lo, hi)))
            if not known:
                queries += [(self._speed, (dimension, "hour", bucket, lo, hi)),
                            (self._periods, ("hour", bucket, lo, hi))]
            plan.append((hours, known))
        results = iter((yield queries))
        wanted = set(ids) if ids is not None else None
        cells: dict[tuple[datetime, str], _Cell] = {}
        recorded: set[datetime] = set()
        for hours, known in plan:
            batch_rows = next(results)
            if known:
                speed_rows: list = []
                here = set(hours)
            else:
                speed_rows = next(results)
                here = {_utc(r.period_start) for r in next(results)}
                self._remember("hour", here, now)
            recorded |= here
            for r in batch_rows:
                start = _utc(r.period_start)
                if start in here and (wanted is None or r.dim_id in wanted):
                    cells[(start, r.dim_id)] = _exact_cell(
                        start, r.dim_id, r.views, r.clicks, r.distinct_users,
                        r.users_sketch if with_sketches else None)
            for r in speed_rows:
                start = _utc(r.period_start)
                if start not in here and (wanted is None or r.dim_id in wanted):
                    cells[(start, r.dim_id)] = _speed_cell(
                        start, r.dim_id, r.views, r.clicks, r.distinct_users, r.users_sketch)
        _zero_fill(cells, recorded, ids)
        return cells, recorded

    def _day_cells(self, dimension: str, start: datetime, end: datetime,
                   ids: list[str] | None, with_sketches: bool,
                   ) -> Generator[Queries, list[list], tuple[dict, set[datetime]]]:
        """Daily cells in [start, end): exact daily batch rows, else days assembled from hours;
        and the complete days (recorded, or all 24 hours recorded)."""
        days = periods("day", start, end)
        if not days:
            return {}, set()
        batch = self._batch_sk if with_sketches else self._batch
        now = time.monotonic()
        known = self._known_recorded("day", days, now)
        queries: Queries = []
        for month in sorted({bucket_of("day", d) for d in days}):
            queries.append((batch, (dimension, "day", month, days[0], days[-1] + DAY)))
            if not known:
                queries.append((self._periods, ("day", month, days[0], days[-1] + DAY)))
        results = yield queries
        step = 1 if known else 2
        if known:
            recorded = set(days)
        else:
            recorded = {_utc(r.period_start) for k in range(1, len(results), 2)
                        for r in results[k]}
            self._remember("day", recorded, now)
        wanted = set(ids) if ids is not None else None
        cells: dict[tuple[datetime, str], _Cell] = {}
        for k in range(0, len(results), step):
            for r in results[k]:
                day = _utc(r.period_start)
                if day in recorded and (wanted is None or r.dim_id in wanted):
                    cells[(day, r.dim_id)] = _exact_cell(
                        day, r.dim_id, r.views, r.clicks, r.distinct_users,
                        r.users_sketch if with_sketches else None)
        _zero_fill(cells, recorded, ids)
        missing = [d for d in days if d not in recorded]
        complete_days = set(recorded)
        if missing:
            hours, recorded_hours = yield from self._hour_cells(
                dimension, [(d, d + DAY) for d in missing], ids, with_sketches=True)
            by_day: dict[tuple[datetime, str], list[_Cell]] = defaultdict(list)
            for (hour, dim_id), cell in hours.items():
                by_day[(floor_to(hour, DAY), dim_id)].append(cell)
            complete_days.update(d for d in missing
                                 if all(d + i * HOUR in recorded_hours for i in range(24)))
            for (day, dim_id), parts in by_day.items():
                cells[(day, dim_id)] = _combine(day, dim_id, parts, day in complete_days)
        return cells, complete_days

    # -- public

    def stats(self, dimension: str, ids: Iterable[str] | None, granularity: str,
              start: datetime, end: datetime) -> list[StatsRow]:
        """Merged rows of ``ids`` (None: every id with data) for periods starting in
        ``[start, end)``, ordered by period then id."""
        return self._drive(self._stats(dimension, ids, granularity, start, end))

    async def astats(self, dimension: str, ids: Iterable[str] | None, granularity: str,
                     start: datetime, end: datetime) -> list[StatsRow]:
        """:meth:`stats` on the running asyncio loop."""
        return await self._adrive(self._stats(dimension, ids, granularity, start, end))

    def top(self, dimension: str, metric: str, start: datetime, end: datetime,
            limit: int = 10) -> TopResult:
        """Ids of ``dimension`` ranked by ``metric`` over the hours starting in ``[start, end)``
        (assembled from whole days where it can, hours at the edges)."""
        return self._drive(self._top(dimension, metric, start, end, limit))

    async def atop(self, dimension: str, metric: str, start: datetime, end: datetime,
                   limit: int = 10) -> TopResult:
        """:meth:`top` on the running asyncio loop."""
        return await self._adrive(self._top(dimension, metric, start, end, limit))

    def _stats(self, dimension: str, ids: Iterable[str] | None, granularity: str,
               start: datetime, end: datetime) -> Generator[Queries, list[list], list[StatsRow]]:
        check_dimension(dimension)
        check_granularity(granularity)
        id_list = check_ids(ids)
        start, end = as_utc(start), as_utc(end)
        check_range(granularity, start, end)
        if granularity == "hour":
            hours = periods("hour", start, end)
            windows = _day_windows(hours[0], hours[-1] + HOUR) if hours else []
            cells, _ = yield from self._hour_cells(dimension, windows, id_list,
                                                   with_sketches=False)
        else:
            cells, _ = yield from self._day_cells(dimension, start, end, id_list,
                                                  with_sketches=False)
        return [cells[k].row(dimension, granularity) for k in sorted(cells)]

    def _top(self, dimension: str, metric: str, start: datetime, end: datetime,
             limit: int) -> Generator[Queries, list[list], TopResult]:
        check_dimension(dimension)
        if metric not in METRICS:
            raise QueryError(f"unknown metric {metric!r}: expected one of {list(METRICS)}")
        if not 1 <= limit <= 1000:
            raise QueryError(f"limit must be 1..1000, got {limit}")
        start, end = as_utc(start), as_utc(end)
        check_range("day", start, end, MAX_TOP_RANGE)
        a, b = ceil_to(start, HOUR), ceil_to(end, HOUR)
        d0, d1 = ceil_to(a, DAY), floor_to(b, DAY)
        if d0 < d1:
            edge_hours = [(a, d0), (d1, b)]
        else:
            edge_hours, d0, d1 = [(a, b)], a, a
        edge_hours = [w for lo, hi in edge_hours if lo < hi for w in _day_windows(lo, hi)]
        hour_cells: dict = {}
        recorded: set[datetime] = set()
        if edge_hours:
            hour_cells, recorded = yield from self._hour_cells(dimension, edge_hours, None,
                                                               with_sketches=True)
        day_cells, complete_days = yield from self._day_cells(dimension, d0, d1, None,
                                                              with_sketches=True)
        n_hours = sum(int((hi - lo) / HOUR) for lo, hi in edge_hours)
        days = periods("day", d0, d1)
        complete = all(h in recorded for lo, hi in edge_hours for h in periods("hour", lo, hi))
        complete = complete and all(d in complete_days for d in days)
        by_id: dict[str, list[_Cell]] = defaultdict(list)
        for (_, dim_id), cell in [*hour_cells.items(), *day_cells.items()]:
            by_id[dim_id].append(cell)
        merged = [_combine(a, dim_id, cells, complete) for dim_id, cells in by_id.items()]

        def key(c: _Cell) -> tuple:
            value = {"views": c.views, "clicks": c.clicks, "ctr": ctr(c.views, c.clicks),
                     "distinct_users": c.users.value}[metric]
            return (value is None, -(value or 0), c.dim_id)

        merged.sort(key=key)
        rows = [TopEntry(i + 1, c.dim_id, c.views, c.clicks, ctr(c.views, c.clicks),
                         c.users.value, c.users.low, c.users.high, c.source, c.exact,
                         c.counts_exact) for i, c in enumerate(merged[:limit])]
        all_exact = all(r.exact for r in rows)
        if all_exact:
            note = "all values exact (batch layer)"
        elif complete:
            note = ("counts exact; distinct_users of ranges spanning several periods are "
                    "HyperLogLog sketch unions: estimates with 2-sd bounds")
        else:
            note = ("part of the range is not yet computed by the batch layer: speed-layer "
                    "values are approximate; distinct_users are sketch estimates with 2-sd bounds")
        return TopResult(dimension, metric, start, end, n_hours, len(days), complete, all_exact,
                         note, rows)

    # -- reconciliation

    def reconciliation(self, granularity: str, start: datetime, end: datetime) -> list[dict]:
        """The batch-vs-speed records (written by the Airflow DAGs' reconcile step) of the
        periods starting in ``[start, end)``, oldest first; a period never reconciled has no
        record. ``views_diff``/``clicks_diff`` = speed - batch: what the speed layer missed
        (late events) or got wrong."""
        check_granularity(granularity)
        start, end = as_utc(start), as_utc(end)
        check_range(granularity, start, end)
        buckets = sorted({bucket_of(granularity, p) for p in periods(granularity, start, end)})
        results = self._fan_out([(self._reconciliation, (granularity, b, start, end))
                                 for b in buckets])
        records = sorted((reconciliation_record(r) for rows in results for r in rows),
                         key=lambda r: r["period_start"])
        late = self.late_events(granularity, start, end)
        for record in records:
            record["late_events"] = late.get(record["period_start"], 0)
        return records

    def late_events(self, granularity: str, start: datetime, end: datetime) -> dict[str, int]:
        """Late events the speed layer counted (dropped from its realtime view), per period
        starting in ``[start, end)``: ISO-8601 period start -> events."""
        step = HOUR if granularity == "hour" else DAY
        days = sorted({bucket_of("hour", p) for p in periods("day", floor_to(start, DAY), end)})
        results = self._fan_out([(self._late, (d, start, end)) for d in days])
        totals: dict[str, int] = defaultdict(int)
        for row in (r for rows in results for r in rows):
            totals[iso(floor_to(_utc(row.period_start), step))] += row.events
        return dict(totals)

    # -- health

    def cassandra_version(self) -> str:
        return self.session.execute(self._version).one().release_version

    def latest_exact(self, granularity: str, now: datetime | None = None) -> datetime | None:
        """The latest period recorded in batch_periods: the current and previous bucket first,
        else a scan of the (small) list of partitions."""
        now = as_utc(now or datetime.now(UTC))
        step = DAY if granularity == "hour" else timedelta(days=31)
        recent = [bucket_of(granularity, now + step), bucket_of(granularity, now),
                  bucket_of(granularity, now - step)]
        for rows in self._fan_out([(self._latest, (granularity, b)) for b in recent]):
            if rows:
                return _utc(rows[0].period_start)
        buckets = sorted((r.bucket for r in self.session.execute(self._partitions)
                          if r.granularity == granularity), reverse=True)
        for bucket in buckets:
            row = self.session.execute(self._latest, (granularity, bucket)).one()
            if row:
                return _utc(row.period_start)
        return None


RECONCILIATION_FIELDS: tuple[str, ...] = (
    "granularity", "period_start", "batch_events", "batch_views", "batch_clicks", "speed_rows",
    "speed_views", "speed_clicks", "views_diff", "clicks_diff", "views_rel_diff",
    "clicks_rel_diff", "users_exact", "users_estimate", "users_rel_error", "batch_run_id",
    "run_id", "checked_at", "late_events")


def reconciliation_record(row: Any) -> dict[str, Any]:
    """A ``reconciliation`` row, JSON-ready (times as ISO-8601 UTC)."""
    raw = row._asdict()
    out = {k: raw.get(k) for k in RECONCILIATION_FIELDS}
    for k in ("period_start", "checked_at"):
        if out[k] is not None:
            out[k] = iso(_utc(out[k]))
    return out


def reconciliation(granularity: str, start: datetime | str, end: datetime | str,
                   session: Session | None = None, cfg: Settings | None = None) -> list[dict]:
    """Reconciliation records (see :meth:`StatsReader.reconciliation`)."""
    start, end = _time(start), _time(end)
    with _reader(session, cfg) as reader:
        return reader.reconciliation(granularity, start, end)


def _day_windows(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """[start, end) cut at UTC midnights (one hourly partition each)."""
    out, lo = [], start
    while lo < end:
        hi = min(floor_to(lo, DAY) + DAY, end)
        out.append((lo, hi))
        lo = hi
    return out


def _zero_fill(cells: dict, recorded: Iterable[datetime], ids: list[str] | None) -> None:
    """A requested id without a row in a recorded period had no events there: an exact zero."""
    if ids is None:
        return
    for start in recorded:
        for dim_id in ids:
            if (start, dim_id) not in cells:
                cells[(start, dim_id)] = _exact_cell(start, dim_id, 0, 0, 0, None)


# --------------------------------------------------------------------------------------------
# One-call API


@contextmanager
def _reader(session: Session | None, cfg: Settings | None) -> Iterator[StatsReader]:
    if session is not None:
        yield StatsReader(session)
        return
    from serving_layer.cassandra_session import reader_session

    with reader_session(cfg or settings()) as own:
        yield StatsReader(own)


def _time(value: datetime | str) -> datetime:
    return parse_time(value) if isinstance(value, str) else as_utc(value)


def stats(dimension: str, ids: Iterable[str] | None, granularity: str,
          start: datetime | str, end: datetime | str, session: Session | None = None,
          cfg: Settings | None = None) -> list[StatsRow]:
    """Merged stats rows (see :meth:`StatsReader.stats`); opens a reader session unless given."""
    start, end = _time(start), _time(end)
    with _reader(session, cfg) as reader:
        return reader.stats(dimension, ids, granularity, start, end)


def top(dimension: str, metric: str, start: datetime | str, end: datetime | str,
        limit: int = 10, session: Session | None = None,
        cfg: Settings | None = None) -> TopResult:
    """Ids ranked by a metric over a range (see :meth:`StatsReader.top`)."""
    start, end = _time(start), _time(end)
    with _reader(session, cfg) as reader:
        return reader.top(dimension, metric, start, end, limit)
