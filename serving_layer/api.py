"""The HTTP API (FastAPI): merged stats, rankings and health. ``adstats serve`` runs it (uvicorn).

    GET /v1/stats/{dimension}?id=…&id=…&granularity=hour|day&from=…&to=…
    GET /v1/top/{dimension}?metric=views|clicks|ctr|distinct_users&from=…&to=…&limit=…
    GET /v1/reconciliation?granularity=hour|day&from=…&to=…
    GET /v1/health
    GET /docs (OpenAPI UI), /openapi.json

One Cassandra session with the READ-ONLY role for the app's lifetime (lifespan); every query is
a prepared statement (serving_layer/merge.py). Bad input is a 400/422 with a message, an
unreachable Cassandra a 503; never a 500 by design.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from cassandra import DriverException, OperationTimedOut, RequestExecutionException
from cassandra.cluster import NoHostAvailable
from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from adstats.config import Settings, settings
from serving_layer import merge
from serving_layer.merge import DAY, HOUR, QueryError, StatsReader
from serving_layer.sketches import CorruptSketch
from speed_layer.stream import status_path as stream_status_path

API_VERSION = "1"
KAFKA_TIMEOUT_S = 2.0


class Dimension(StrEnum):
    placement = "placement"
    page = "page"
    banner = "banner"


class Granularity(StrEnum):
    hour = "hour"
    day = "day"


class Metric(StrEnum):
    views = "views"
    clicks = "clicks"
    ctr = "ctr"
    distinct_users = "distinct_users"


class Source(StrEnum):
    batch = "batch"
    speed = "speed"
    mixed = "mixed"


class Error(BaseModel):
    detail: str = Field(description="what was wrong with the request, or what is unavailable")


class StatsRow(BaseModel):
    dimension: Dimension
    id: str
    granularity: Granularity
    period_start: datetime = Field(description="start of the UTC hour or day")
    views: int
    clicks: int
    ctr: float | None = Field(description="clicks / views; null when views = 0")
    distinct_users: int = Field(description="exact, or a HyperLogLog estimate when exact=false")
    distinct_users_low: int = Field(description="lower bound (2 sd); = value when exact")
    distinct_users_high: int = Field(description="upper bound (2 sd); = value when exact")
    source: Source = Field(description="batch (exact views), speed (realtime views) or mixed "
                           "(a day assembled from batch and speed hours)")
    exact: bool = Field(description="every number of the row is exact")
    counts_exact: bool = Field(description="views, clicks and ctr are exact")


class StatsResponse(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    dimension: Dimension
    granularity: Granularity
    from_: datetime = Field(alias="from", description="range start (inclusive), UTC")
    to: datetime = Field(description="range end (exclusive), UTC")
    ids: list[str] | None = Field(description="the requested ids; null = every id with data")
    rows: list[StatsRow] = Field(description="ordered by period_start, then id")


class TopRow(BaseModel):
    rank: int
    id: str
    views: int
    clicks: int
    ctr: float | None
    distinct_users: int
    distinct_users_low: int
    distinct_users_high: int
    source: Source
    exact: bool
    counts_exact: bool


class TopResponse(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    dimension: Dimension
    metric: Metric
    from_: datetime = Field(alias="from")
    to: datetime
    hours: int = Field(description="hourly periods the range was assembled from (edges)")
    days: int = Field(description="daily periods the range was assembled from")
    complete: bool = Field(description="every period of the range is computed by the batch "
                           "layer (counts exact)")
    distinct_users_exact: bool = Field(description="every row's distinct_users is exact: only "
                                       "when each id's users come from one exact period")
    note: str
    rows: list[TopRow]


class ReconciliationRow(BaseModel):
    """Batch vs speed for one period, recorded by the DAGs' reconcile step (placement totals)."""

    granularity: Granularity
    period_start: datetime
    batch_events: int | None = Field(description="input events of the exact batch run")
    batch_views: int | None
    batch_clicks: int | None
    speed_rows: int | None = Field(description="realtime rows found for the period")
    speed_views: int | None
    speed_clicks: int | None
    views_diff: int | None = Field(description="speed - batch: negative = events the speed "
                                   "layer missed (late), repaired by the batch layer")
    clicks_diff: int | None
    views_rel_diff: float | None
    clicks_rel_diff: float | None
    users_exact: int | None = Field(description="exact distinct users (placements summed)")
    users_estimate: int | None = Field(description="the speed layer's HLL estimate")
    users_rel_error: float | None = Field(description="(estimate - exact) / exact")
    batch_run_id: str | None
    run_id: str | None = Field(description="the Airflow run that reconciled it")
    checked_at: datetime | None
    late_events: int | None = Field(None, description="events the speed layer itself counted "
                                    "as late (dropped from its view, archived): read live, so "
                                    "later than the reconcile step; -(views_diff + "
                                    "clicks_diff) when nothing else differs")


class ReconciliationResponse(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    granularity: Granularity
    from_: datetime = Field(alias="from")
    to: datetime
    rows: list[ReconciliationRow] = Field(description="one per reconciled period, oldest first")


class Component(BaseModel):
    ok: bool
    detail: str
    latency_ms: float | None = None


class StreamStatus(BaseModel):
    """The speed layer's status file (``$ADSTATS_STATE_DIR/stream/status.json``)."""

    updated_at: str | None = Field(None, description="when the stream last wrote the file")
    last_batch_time: str | None = None
    input_rate: float | None = None
    processing_rate: float | None = None
    kafka_lag: int | None = None
    watermark: str | None = None
    dlq_count: int | None = None
    late_count: int | None = None
    late_by_hour: dict[str, int] | None = Field(None, description="late events per event hour "
                                                "(ISO-8601), counted live")
    late_unattributed: int | None = Field(None, description="late events whose hour is not "
                                          "known (yet)")
    file_age_seconds: float | None = Field(None, description="seconds since the file changed")


class Health(BaseModel):
    status: str = Field(description="ok | degraded (Kafka unreachable) | down (no Cassandra)")
    cassandra: Component
    kafka: Component
    latest_exact_hour: datetime | None = Field(description="latest hour in batch_periods")
    latest_exact_day: datetime | None = Field(description="latest day in batch_periods")
    stream: StreamStatus | None = Field(description="speed layer status; null when absent")
    stream_status_file: str


# --------------------------------------------------------------------------------------------

IdStr = Annotated[str, StringConstraints(pattern=merge.ID_PATTERN, max_length=merge.ID_MAX_LENGTH)]
TimeStr = Annotated[str, StringConstraints(max_length=40)]
_TIME_DOC = "ISO-8601, UTC unless an offset is given: 2026-02-01, 2026-02-01T13, " \
            "2026-02-01T13:00:00Z"
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Error, "description": "invalid range or parameters"},
    422: {"model": Error, "description": "a parameter does not parse"},
    503: {"model": Error, "description": "Cassandra unavailable, or stored data unreadable"},
}


def _json(body: dict[str, Any]) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")


def get_reader(request: Request) -> StatsReader:
    return request.app.state.reader


def get_settings(request: Request) -> Settings:
    return request.app.state.cfg


def _default_end(granularity: str) -> datetime:
    now = datetime.now(UTC)
    return merge.ceil_to(now, HOUR if granularity == "hour" else DAY)


def _range(granularity: str, start: str | None, end: str | None,
           span: timedelta) -> tuple[datetime, datetime]:
    to = merge.parse_time(end) if end else _default_end(granularity)
    frm = merge.parse_time(start) if start else to - span
    return frm, to


def _kafka_probe(bootstrap: str) -> Component:
    from kafka import KafkaAdminClient

    began = time.monotonic()
    admin = None
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap, client_id="adstats-health",
            request_timeout_ms=int(KAFKA_TIMEOUT_S * 1000),
            bootstrap_timeout_ms=int(KAFKA_TIMEOUT_S * 1000),
        )
        topics = admin.list_topics()
        return Component(ok=True, detail=f"{bootstrap}: {len(topics)} topic(s)",
                         latency_ms=round((time.monotonic() - began) * 1000, 1))
    except Exception as exc:  # any failure means "not reachable" for health
        return Component(ok=False, detail=f"{bootstrap}: {type(exc).__name__}: {exc}")
    finally:
        if admin is not None:
            admin.close()


def _number(value: object, kind: type) -> Any:
    try:
        return kind(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def read_stream_status(path: Path) -> StreamStatus | None:
    """The speed layer's status, leniently: an absent or unreadable file is None."""
    try:
        raw = json.loads(path.read_text())
        age = time.time() - path.stat().st_mtime
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None
    text = {k: None if raw.get(k) is None else str(raw[k])
            for k in ("updated_at", "last_batch_time", "watermark")}
    floats = {k: _number(raw.get(k), float) for k in ("input_rate", "processing_rate")}
    ints = {k: _number(raw.get(k), int)
            for k in ("kafka_lag", "dlq_count", "late_count", "late_unattributed")}
    by_hour = raw.get("late_by_hour")
    if isinstance(by_hour, dict):
        by_hour = {str(k): n for k, v in by_hour.items() if (n := _number(v, int)) is not None}
    else:
        by_hour = None
    return StreamStatus(**text, **floats, **ints, late_by_hour=by_hour,
                        file_age_seconds=round(age, 1))


# --------------------------------------------------------------------------------------------



# The range parameters of the hour-or-day endpoints (stats, reconciliation), declared once.
PeriodFrom = Annotated[TimeStr | None, Query(
    alias="from", description=f"range start, inclusive. {_TIME_DOC}. Default: to - 24 h "
    "(hour) or to - 7 days (day)")]
PeriodTo = Annotated[TimeStr | None, Query(
    description=f"range end, exclusive. {_TIME_DOC}. Default: the next hour/day boundary")]

def create_app(cfg: Settings | None = None) -> FastAPI:
    """The app; it connects to Cassandra (reader role) when it starts (lifespan)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from serving_layer.cassandra_session import reader_session

        app.state.cfg = cfg or settings()
        app.state.probes = ThreadPoolExecutor(max_workers=2, thread_name_prefix="health")
        try:
            with reader_session(app.state.cfg) as session:
                app.state.reader = StatsReader(session)
                yield
        finally:
            app.state.probes.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="adstats serving API", version=API_VERSION, lifespan=lifespan,
        description="Views, clicks, CTR and distinct users per placement, page and banner: the "
        "exact batch views merged with the fresh speed views at query time. Every row says "
        "where it came from (`source`) and whether it is `exact`.",
    )

    @app.exception_handler(QueryError)
    async def _bad_query(request: Request, exc: QueryError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": str(exc)})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("query", "path"))
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return JSONResponse(status_code=422, content={"detail": "; ".join(parts) or "invalid"})

    async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=503,
                            content={"detail": f"Cassandra unavailable: {type(exc).__name__}"})

    for kind in (NoHostAvailable, OperationTimedOut, RequestExecutionException, DriverException):
        app.add_exception_handler(kind, _unavailable)

    @app.exception_handler(CorruptSketch)
    async def _corrupt(request: Request, exc: CorruptSketch) -> JSONResponse:
        # Stored data, not the request, is at fault: say so instead of a bare 500.
        return JSONResponse(status_code=503, content={"detail": f"stored data unreadable: {exc}"})

    @app.get("/v1/stats/{dimension}", response_model=StatsResponse, responses=_ERRORS,
             summary="merged stats per id and period")
    async def get_stats(
        reader: Annotated[StatsReader, Depends(get_reader)],
        dimension: Annotated[Dimension, PathParam(description="placement, page or banner")],
        id: Annotated[list[IdStr] | None, Query(
            max_length=merge.MAX_IDS, description="ids to return (repeat); none = every id "
            "with data")] = None,
        granularity: Granularity = Granularity.hour,
        from_: PeriodFrom = None,
        to: PeriodTo = None,
    ) -> Response:
        """Rows of periods STARTING in [from, to). Hourly ranges up to 31 days, daily up to
        366 days. A batch row wins over a speed row once the batch layer has recorded its
        period; a day not yet recorded is assembled from its hours (source `mixed` when both
        layers contributed)."""
        span = timedelta(days=1) if granularity is Granularity.hour else timedelta(days=7)
        start, end = _range(granularity.value, from_, to, span)
        rows = await reader.astats(dimension.value, id, granularity.value, start, end)
        # JSON straight from the rows: validating ~100 rows through pydantic again would cost
        # more than the Cassandra reads (the tests check the output against the schema).
        return _json({"dimension": dimension.value, "granularity": granularity.value,
                      "from": merge.iso(start), "to": merge.iso(end),
                      "ids": merge.check_ids(id), "rows": [r.as_dict() for r in rows]})

    @app.get("/v1/top/{dimension}", response_model=TopResponse, responses=_ERRORS,
             summary="ids ranked by a metric over a range")
    async def get_top(
        reader: Annotated[StatsReader, Depends(get_reader)],
        dimension: Annotated[Dimension, PathParam(description="placement, page or banner")],
        metric: Metric = Metric.views,
        from_: Annotated[TimeStr | None, Query(
            alias="from", description=f"range start, inclusive. {_TIME_DOC}. Default: to - 24 h"
        )] = None,
        to: Annotated[TimeStr | None, Query(
            description=f"range end, exclusive. {_TIME_DOC}. Default: the next hour")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 10,
    ) -> Response:
        """Ids ranked by `metric` (descending; ties by id; null ctr last) over the hours
        starting in [from, to), up to 366 days. Whole days use daily rows, the edges hourly
        rows. `distinct_users` over several periods is a sketch union (an estimate, with 2-sd
        bounds) unless an id's users all come from one exact period (e.g. one exact day)."""
        start, end = _range("hour", from_, to, timedelta(days=1))
        result = await reader.atop(dimension.value, metric.value, start, end, limit)
        body = result.as_dict()
        start, end = body.pop("start"), body.pop("end")
        return _json({"dimension": body.pop("dimension"), "metric": body.pop("metric"),
                      "from": start, "to": end, **body})

    @app.get("/v1/reconciliation", response_model=ReconciliationResponse, responses=_ERRORS,
             summary="speed layer vs exact batch, per reconciled period")
    def get_reconciliation(
        reader: Annotated[StatsReader, Depends(get_reader)],
        granularity: Granularity = Granularity.hour,
        from_: PeriodFrom = None,
        to: PeriodTo = None,
    ) -> Response:
        """How far the fresh numbers were from the exact ones, per period the batch layer has
        reconciled (the Airflow DAGs' last step): count differences are late or lost events,
        the users error is the HyperLogLog error."""
        span = timedelta(days=1) if granularity is Granularity.hour else timedelta(days=7)
        start, end = _range(granularity.value, from_, to, span)
        rows = reader.reconciliation(granularity.value, start, end)
        return _json({"granularity": granularity.value, "from": merge.iso(start),
                      "to": merge.iso(end), "rows": rows})

    @app.get("/v1/health", response_model=Health,
             responses={503: {"model": Health, "description": "Cassandra unreachable"}},
             summary="Cassandra, Kafka, batch progress and stream lag")
    def get_health(request: Request,
                   reader: Annotated[StatsReader, Depends(get_reader)]) -> Any:
        cfg: Settings = request.app.state.cfg
        kafka = request.app.state.probes.submit(_kafka_probe, cfg.kafka_bootstrap)
        began = time.monotonic()
        latest_hour = latest_day = None
        try:
            version = reader.cassandra_version()
            cassandra = Component(ok=True, detail=f"Cassandra {version}",
                                  latency_ms=round((time.monotonic() - began) * 1000, 1))
            latest_hour = reader.latest_exact("hour")
            latest_day = reader.latest_exact("day")
        except Exception as exc:  # reachability is the answer here, not an error
            cassandra = Component(ok=False, detail=f"{type(exc).__name__}: {exc}"[:500])
        try:
            kafka_health = kafka.result(timeout=KAFKA_TIMEOUT_S + 1.5)
        except FutureTimeout:
            kafka_health = Component(ok=False, detail=f"{cfg.kafka_bootstrap}: no answer within "
                                     f"{KAFKA_TIMEOUT_S + 1.5:.1f} s")
        status_file = stream_status_path(cfg)
        health = Health(
            status="down" if not cassandra.ok else "ok" if kafka_health.ok else "degraded",
            cassandra=cassandra, kafka=kafka_health, latest_exact_hour=latest_hour,
            latest_exact_day=latest_day, stream=read_stream_status(status_file),
            stream_status_file=str(status_file),
        )
        if not cassandra.ok:
            return JSONResponse(status_code=503, content=health.model_dump(mode="json"))
        return health

    return app


def serve(host: str = "127.0.0.1", port: int = 8000, access_log: bool = False,
          cfg: Settings | None = None) -> None:
    """Run the API with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(cfg), host=host, port=port, access_log=access_log,
                log_level="info")
