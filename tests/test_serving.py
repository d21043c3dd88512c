"""Serving layer: batch + speed views merged at query time, on the real stack.

The batch rows come from really running the batch layer (ingest generated files, ``run_batch``
for the hours before 14:00); the speed rows for 14:00-17:00 are what the stream writes:
``approximate_stats`` of the same kind of events, upserted with ``write_speed_rows``. Every
expectation is computed independently from the CSV files with DuckDB (tests/oracle.py).
"""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from serving_layer import merge, sketches
from serving_layer.merge import QueryError, StatsReader

DAY = "2026-04-17"  # this module's own date (other tests use other dates in the same keyspace)
D0 = datetime(2026, 4, 17, tzinfo=UTC)
NEXT = D0 + timedelta(days=1)
FIRST_HOUR, BATCH_UNTIL, SPEED_UNTIL = 10, 14, 17  # data 10-16; batch < 14; speed 14, 15, 16


def at(hour: int) -> datetime:
    return D0 + timedelta(hours=hour)


# --------------------------------------------------------------------------------------------
# Unit tests (no stack)


def test_parse_time_forms_and_refusals():
    assert merge.parse_time("2026-04-17") == D0
    assert merge.parse_time("2026-04-17T13") == at(13)
    assert merge.parse_time("2026-04-17T13:00:00Z") == at(13)
    assert merge.parse_time("2026-04-17T15:00:00+02:00") == at(13)
    for bad in ("", "yesterday", "2026-13-01", "0001-01-01", "9999-12-31T00", "2026-04-17T25"):
        with pytest.raises(QueryError):
            merge.parse_time(bad)


def test_range_checks_and_periods():
    merge.check_range("hour", D0, D0)  # empty is fine: no rows
    with pytest.raises(QueryError, match="after"):
        merge.check_range("hour", NEXT, D0)
    with pytest.raises(QueryError, match="too large"):
        merge.check_range("hour", D0, D0 + timedelta(days=32))
    merge.check_range("day", D0, D0 + timedelta(days=366))
    # [start, end) on period_start: a period is in when it STARTS in the range.
    assert merge.periods("hour", at(9) + timedelta(minutes=30), at(12)) == [at(10), at(11)]
    assert merge.periods("day", at(12), D0 + timedelta(days=3)) == [NEXT, NEXT + timedelta(1)]


def test_id_validation():
    assert merge.check_ids(["a", "b", "a"]) == ["a", "b"]
    assert merge.check_ids(None) is None and merge.check_ids([]) is None
    for bad in ("", " x", "a b", "x" * 65, "ü", "-a", "a;drop"):
        with pytest.raises(QueryError):
            merge.check_ids([bad])
    with pytest.raises(QueryError, match="too many"):
        merge.check_ids([f"id{i}" for i in range(101)])


def _sketch(users: range) -> bytes:
    from datasketches import hll_sketch

    s = hll_sketch(12)
    for u in users:
        s.update(f"user{u}")
    return s.serialize_compact()


def test_combine_rules():
    h = [at(10), at(11)]
    a, b = _sketch(range(0, 3000)), _sketch(range(2000, 5000))
    batch = merge._exact_cell(h[0], "p", 10, 1, 3000, a)
    speed = merge._speed_cell(h[1], "p", 20, 2, 3000, b)
    mixed = merge._combine(D0, "p", [batch, speed], complete=False)
    assert (mixed.views, mixed.clicks, mixed.source, mixed.exact, mixed.counts_exact) == (
        30, 3, "mixed", False, False)
    assert mixed.users.low <= 5000 <= mixed.users.high and mixed.users.low >= 3000
    # all periods recorded: counts exact, users still an estimate (several busy periods)
    both = merge._combine(D0, "p", [batch, merge._exact_cell(h[1], "p", 5, 0, 3000, b)], True)
    assert both.counts_exact and not both.exact and both.source == "batch"
    assert 3000 <= both.users.low <= both.users.value <= both.users.high <= 6000
    # one busy period among known zeros: exact
    one = merge._combine(D0, "p", [batch, merge._exact_cell(h[1], "p", 0, 0, 0, None)], True)
    assert one.exact and one.users == sketches.Estimate.exact(3000)


def test_unreadable_sketch_bytes_raise_a_named_error():
    good = _sketch(range(100))
    for bad in (b"", b"not a sketch", bytes(good)[:50]):
        with pytest.raises(sketches.CorruptSketch, match="unreadable HLL sketch"):
            sketches.load(bad)


# --------------------------------------------------------------------------------------------
# The real stack: batch layer for hours < 14, speed rows for 14-16


@pytest.fixture(scope="module")
def landing(tmp_path_factory) -> list[Path]:
    from utils.generate_sample_data import generate

    root = tmp_path_factory.mktemp("serving-landing")
    return generate(
        out_dir=root, n_events=3000, n_banners=6, n_pages=8, n_batches=SPEED_UNTIL - FIRST_HOUR,
        n_users=5000, start=at(FIRST_HOUR), seed=17, event_id=True, skew=1.1, quiet=True,
    )


@pytest.fixture(scope="module")
def oracle(landing) -> dict:
    from tests.oracle import oracle_stats

    return oracle_stats(landing)


def _speed_rows(spark, cfg, hours: list[datetime]) -> list[dict]:
    """What the stream writes for these hours: approximate_stats of their events."""
    import inspect

    from pyspark.sql import functions as F

    from adstats.stats import approximate_stats, explode_dimensions, with_period
    from batch_layer.master import read_events

    events = read_events(spark, cfg.master_dir, hours)
    if "event_time" in inspect.signature(approximate_stats).parameters:  # windowed (stream)
        stats = approximate_stats(events.withColumn("event_time",
                                                    F.timestamp_seconds("timestamp")))
    else:
        stats = approximate_stats(with_period(explode_dimensions(events), "hour"))
    return [r.asDict() for r in stats.collect()]


@pytest.fixture(scope="module")
def loaded(stack, spark, landing, tmp_path_factory):
    from batch_layer.ingest import ingest
    from batch_layer.jobs import run_batch
    from serving_layer.cassandra_session import writer_session
    from serving_layer.views import write_speed_rows

    cfg = dataclasses.replace(stack, data_dir=tmp_path_factory.mktemp("serving-data"))
    ingest([landing[0].parent], spark=spark, cfg=cfg, quiet=True)
    run_batch([at(h) for h in range(BATCH_UNTIL)], spark=spark, cfg=cfg, quiet=True)
    rows = _speed_rows(spark, cfg, [at(h) for h in range(BATCH_UNTIL, SPEED_UNTIL)])
    # The stream also keeps writing rows for hours the batch has finished: they must lose.
    stale = [dict(r, views=999_999) for r in _speed_rows(spark, cfg, [at(12)])]
    with writer_session(cfg) as session:
        write_speed_rows(session, rows + stale)
    return cfg


@pytest.fixture(scope="module")
def reader(stack):
    from serving_layer.cassandra_session import reader_session

    with reader_session(stack) as session:
        yield StatsReader(session)


def _expected(oracle, dimension: str, granularity: str) -> dict[tuple[str, datetime], tuple]:
    return {(dim_id, datetime.fromtimestamp(p, UTC)): v
            for (dim, dim_id, gran, p), v in oracle.items()
            if dim == dimension and gran == granularity and D0.timestamp() <= p < NEXT.timestamp()}


def test_hourly_series_every_hour_once_with_its_source(loaded, reader, oracle):
    expected = _expected(oracle, "placement", "hour")
    rows = reader.stats("placement", ["placement0", "placement3"], "hour", D0, NEXT)
    keys = [(r.id, r.period_start) for r in rows]
    assert len(keys) == len(set(keys))
    for dim_id in ("placement0", "placement3"):
        mine = {r.period_start: r for r in rows if r.id == dim_id}
        # hours 0-13 recorded by the batch (0-9: known zeros), 14-16 speed, 17-23 nothing yet
        assert sorted(mine) == [at(h) for h in range(SPEED_UNTIL)]
        for h in range(SPEED_UNTIL):
            r = mine[at(h)]
            views, clicks, users = expected.get((dim_id, at(h)), (0, 0, 0))
            assert (r.views, r.clicks) == (views, clicks), h
            assert r.ctr == (clicks / views if views else None)
            if h < BATCH_UNTIL:
                assert (r.source, r.exact, r.distinct_users) == ("batch", True, users)
                assert r.distinct_users_low == r.distinct_users_high == users
            else:
                assert (r.source, r.exact, r.counts_exact) == ("speed", False, False)
                assert r.distinct_users_low <= users <= r.distinct_users_high


def test_recorded_hours_are_remembered(loaded, reader):
    """Once seen recorded, a window of hours needs only its batch_stats read."""
    reader.stats("placement", None, "hour", D0, at(BATCH_UNTIL))
    assert len(next(reader._hour_cells("placement", [(D0, at(BATCH_UNTIL))], None, False))) == 1
    # hour 14 is not recorded: speed_stats and batch_periods are read again
    assert len(next(reader._hour_cells("placement", [(D0, at(15))], None, False))) == 3


def test_all_ids_hourly(loaded, reader, oracle):
    expected = _expected(oracle, "page", "hour")
    rows = reader.stats("page", None, "hour", D0, NEXT)
    got = {(r.id, r.period_start): (r.views, r.clicks) for r in rows}
    assert got == {k: v[:2] for k, v in expected.items()}  # no zero rows without explicit ids
    assert {r.source for r in rows if r.period_start >= at(BATCH_UNTIL)} == {"speed"}
    assert {r.source for r in rows if r.period_start < at(BATCH_UNTIL)} == {"batch"}


def test_range_is_half_open_on_period_start(loaded, reader):
    rows = reader.stats("banner", ["banner1"], "hour", at(12) + timedelta(minutes=1), at(15))
    assert [r.period_start for r in rows] == [at(13), at(14)]
    assert reader.stats("banner", ["banner1"], "hour", at(12), at(12)) == []


def test_day_assembled_from_batch_and_speed_hours_is_mixed(loaded, reader, oracle):
    expected = _expected(oracle, "placement", "day")
    rows = reader.stats("placement", None, "day", D0, NEXT)
    assert {r.id for r in rows} == {i for i, _ in expected}
    for r in rows:
        views, clicks, users = expected[(r.id, D0)]
        assert (r.source, r.exact, r.counts_exact) == ("mixed", False, False)
        assert (r.views, r.clicks) == (views, clicks)
        assert r.distinct_users_low <= users <= r.distinct_users_high
        assert r.distinct_users_low < r.distinct_users_high
        assert abs(r.distinct_users - users) <= 0.05 * users


def test_top_over_the_day(loaded, reader, oracle):
    expected = _expected(oracle, "page", "day")
    result = reader.top("page", "views", D0, NEXT, limit=3)
    ranked = sorted(((-v[0], i) for (i, _), v in expected.items()))[:3]
    assert [r.id for r in result.rows] == [i for _, i in ranked]
    assert [r.rank for r in result.rows] == [1, 2, 3]
    assert not result.complete and not result.distinct_users_exact and result.days == 1
    by_ctr = reader.top("page", "ctr", D0, NEXT, limit=100)
    ctrs = [r.ctr for r in by_ctr.rows]
    assert ctrs == sorted(ctrs, reverse=True)
    # edges in hours + no whole day: 12:00-16:00 (12, 13 batch; 14, 15 speed)
    edge = reader.top("banner", "clicks", at(12), at(16), limit=50)
    assert (edge.hours, edge.days) == (4, 0)
    exp = {k: v for k, v in _expected(oracle, "banner", "hour").items()
           if at(12) <= k[1] < at(16)}
    totals: dict[str, int] = {}
    for (dim_id, _), v in exp.items():
        totals[dim_id] = totals.get(dim_id, 0) + v[1]
    assert {r.id: r.clicks for r in edge.rows} == totals
    with pytest.raises(QueryError):
        reader.top("page", "revenue", D0, NEXT)


def test_python_sketch_union_equals_spark_hll_union_agg(loaded, reader, spark):
    """Hourly sketches of every page, batch and speed, unioned per page by both sides."""
    from pyspark.sql import functions as F

    by_page: dict[str, list[bytes]] = {}
    windows = [(D0, NEXT)]
    cells, _ = reader._drive(reader._hour_cells("page", windows, None, with_sketches=True))
    for (_, dim_id), cell in cells.items():
        by_page.setdefault(dim_id, []).extend(bytes(s) for s in cell.sketches)
    assert by_page and all(len(v) == SPEED_UNTIL - FIRST_HOUR for v in by_page.values())
    df = spark.createDataFrame([(k, s) for k, v in by_page.items() for s in v],
                               "page string, sketch binary")
    spark_est = {r.page: r.est for r in df.groupBy("page").agg(
        F.hll_sketch_estimate(F.hll_union_agg("sketch")).alias("est")).collect()}
    python_est = {k: sketches.union_estimate(v).value for k, v in by_page.items()}
    assert python_est == spark_est


# --------------------------------------------------------------------------------------------
# The HTTP API: uvicorn on 127.0.0.1 (a free port) in a thread, stopped through its handle


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _serve(cfg) -> Iterator[httpx.Client]:
    """The app under uvicorn on 127.0.0.1 (a free port) in a thread; a client to it."""
    import uvicorn

    from serving_layer.api import create_app

    server = uvicorn.Server(uvicorn.Config(
        create_app(cfg), host="127.0.0.1", port=_free_port(), log_level="warning",
        access_log=False))
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive()


@pytest.fixture(scope="module")
def api(stack, tmp_path_factory):
    cfg = dataclasses.replace(stack, state_dir=tmp_path_factory.mktemp("serving-state"))
    with _serve(cfg) as client:
        yield client, cfg


def test_api_stats_equals_library(loaded, api, reader):
    client, _ = api
    resp = client.get("/v1/stats/placement", params={
        "id": ["placement1", "placement2"], "granularity": "hour", "from": DAY,
        "to": f"{NEXT:%Y-%m-%d}"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["from"], body["to"], body["ids"]) == (
        "2026-04-17T00:00:00Z", "2026-04-18T00:00:00Z", ["placement1", "placement2"])
    lib = [r.as_dict() for r in reader.stats("placement", ["placement1", "placement2"], "hour",
                                             D0, NEXT)]
    assert body["rows"] == lib
    day = client.get("/v1/stats/placement", params={
        "granularity": "day", "from": DAY, "to": f"{NEXT:%Y-%m-%d}"}).json()
    assert {r["source"] for r in day["rows"]} == {"mixed"}


def test_api_top(loaded, api, reader):
    client, _ = api
    resp = client.get("/v1/top/banner", params={"metric": "distinct_users", "from": DAY,
                                                 "to": f"{NEXT:%Y-%m-%d}", "limit": 2})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    lib = reader.top("banner", "distinct_users", D0, NEXT, 2)
    assert [r["id"] for r in body["rows"]] == [r.id for r in lib.rows]
    assert body["distinct_users_exact"] is False and body["note"]


def test_reconciliation_records_are_served(loaded, api, capsys):
    """The DAGs' batch-vs-speed records, through the library, the API and the CLI."""
    from serving_layer.cassandra_session import writer_session
    from serving_layer.merge import reconciliation
    from serving_layer.views import write_late_events, write_reconciliation

    client, cfg = api
    record = {"granularity": "hour", "period_start": at(13), "batch_events": 3000,
              "batch_views": 2700, "batch_clicks": 300, "speed_rows": 5, "speed_views": 2698,
              "speed_clicks": 300, "views_diff": -2, "clicks_diff": 0, "views_rel_diff": -2 / 2700,
              "clicks_rel_diff": 0.0, "users_exact": 4000, "users_estimate": 4011,
              "users_rel_error": 11 / 4000, "batch_run_id": "batch-1", "run_id": "test-run",
              "checked_at": datetime.now(UTC)}
    with writer_session(cfg) as session:
        write_reconciliation(session, record)
        # The speed layer's own late counts, two micro-batches for hour 13 (one rewritten, as
        # after a restart), one for an hour outside the range.
        write_late_events(session, "q/7", {f"{DAY}T13:00:00+00:00": 5})
        write_late_events(session, "q/7", {f"{DAY}T13:00:00+00:00": 1})
        write_late_events(session, "q/9", {f"{DAY}T13:00:00+00:00": 1,
                                           f"{DAY}T17:00:00+00:00": 4})
    rows = reconciliation("hour", at(12), at(16), cfg=cfg)
    assert [r["period_start"] for r in rows] == [f"{DAY}T13:00:00Z"]
    assert rows[0]["views_diff"] == -2 and rows[0]["users_estimate"] == 4011
    assert rows[0]["late_events"] == 2
    body = client.get("/v1/reconciliation", params={"from": f"{DAY}T12", "to": f"{DAY}T16"})
    assert body.status_code == 200, body.text
    assert body.json()["rows"] == rows
    assert client.get("/v1/reconciliation", params={
        "from": f"{DAY}T14", "to": f"{DAY}T16"}).json()["rows"] == []
    assert _cli("reconciliation", "--from", f"{DAY}T12", "--to", f"{DAY}T16") == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["period_start", "batch_events"] and len(table) == 3


@pytest.mark.parametrize(("path", "params", "status", "words"), [
    ("/v1/stats/campaign", {}, 422, "dimension"),
    ("/v1/stats/page", {"id": ""}, 422, "id"),
    ("/v1/stats/page", {"id": "x" * 65}, 422, "id"),
    ("/v1/stats/page", {"id": "a b"}, 422, "id"),
    ("/v1/stats/page", {"id": "päge"}, 422, "id"),
    ("/v1/stats/page", {"id": [f"p{i}" for i in range(101)]}, 422, "id"),
    ("/v1/stats/page", {"granularity": "week"}, 422, "granularity"),
    ("/v1/stats/page", {"from": "2026-04-18", "to": "2026-04-17"}, 400, "after"),
    ("/v1/stats/page", {"from": "2026-01-01", "to": "2026-04-17"}, 400, "too large"),
    ("/v1/stats/page", {"granularity": "day", "from": "2020-01-01", "to": "2026-04-17"}, 400,
     "too large"),
    ("/v1/stats/page", {"from": "last tuesday"}, 400, "ISO-8601"),
    ("/v1/stats/page", {"from": "9999-12-31T23:59:59"}, 400, "outside"),
    ("/v1/stats/page", {"to": "2026-02-30"}, 400, "ISO-8601"),
    ("/v1/top/page", {"metric": "revenue"}, 422, "metric"),
    ("/v1/top/page", {"limit": 0}, 422, "limit"),
    ("/v1/top/page", {"limit": "many"}, 422, "limit"),
    ("/v1/top/page", {"from": "2024-01-01", "to": "2026-01-01"}, 400, "too large"),
    ("/v1/reconciliation", {"granularity": "week"}, 422, "granularity"),
    ("/v1/reconciliation", {"from": "2026-04-18", "to": "2026-04-17"}, 400, "after"),
    ("/v1/reconciliation", {"from": "soon"}, 400, "ISO-8601"),
])
def test_api_rejects_bad_input_with_a_message(api, path, params, status, words):
    client, _ = api
    resp = client.get(path, params=params)
    assert resp.status_code == status, resp.text
    detail = resp.json()["detail"]
    assert isinstance(detail, str) and words in detail


def test_api_health_and_stream_status(loaded, api):
    client, cfg = api
    body = client.get("/v1/health").json()
    assert body["status"] == "ok" and body["cassandra"]["ok"] and body["kafka"]["ok"]
    assert body["stream"] is None
    assert datetime.fromisoformat(body["latest_exact_hour"]) >= at(BATCH_UNTIL - 1)
    status = cfg.state_dir / "stream" / "status.json"
    status.parent.mkdir(parents=True, exist_ok=True)
    status.write_text(json.dumps({
        "last_batch_time": "2026-04-17T16:59:30Z", "input_rate": 1234.5,
        "processing_rate": 2345.25, "kafka_lag": 17, "watermark": "2026-04-17T16:49:30Z",
        "dlq_count": 2, "late_count": 5, "late_unattributed": 1,
        "late_by_hour": {"2026-04-17T15:00:00+00:00": 4}}))
    stream = client.get("/v1/health").json()["stream"]
    assert (stream["kafka_lag"], stream["input_rate"], stream["late_count"]) == (17, 1234.5, 5)
    assert stream["late_by_hour"] == {"2026-04-17T15:00:00+00:00": 4}
    assert stream["late_unattributed"] == 1
    status.write_text("{not json")
    assert client.get("/v1/health").json()["stream"] is None
    status.unlink()


def test_health_degraded_when_kafka_is_unreachable(stack):
    cfg = dataclasses.replace(stack, kafka_bootstrap=f"127.0.0.1:{_free_port()}")
    with _serve(cfg) as client:
        began = time.monotonic()
        body = client.get("/v1/health").json()
    assert body["status"] == "degraded" and not body["kafka"]["ok"] and body["cassandra"]["ok"]
    assert time.monotonic() - began < 6


def test_openapi_and_docs(api):
    client, _ = api
    spec = client.get("/openapi.json").json()
    assert {"/v1/stats/{dimension}", "/v1/top/{dimension}", "/v1/reconciliation",
            "/v1/health"} <= set(spec["paths"])
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_api_fuzz_no_server_errors(loaded, api, mode):
    """schemathesis: cases generated from the OpenAPI spec (valid ones, then invalid ones),
    30 per operation; no 5xx, and every response is documented and matches its schema."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    client, _ = api
    schema = schemathesis.openapi.from_url(f"{client.base_url}/openapi.json")
    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_schema_conformance]
    generation = schemathesis.GenerationMode(mode)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 4
    for operation in operations:
        if mode == "negative" and operation.path == "/v1/health":
            continue  # no parameters: nothing invalid to generate

        @given(case=operation.as_strategy(generation_mode=generation))
        @settings(max_examples=30, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case) -> None:
            case.call_and_validate(checks=checks)

        run()


def _cli(*argv: str) -> int:
    import argparse

    from serving_layer.cli import register

    parser = argparse.ArgumentParser(prog="adstats")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_cli_query_and_top(loaded, reader, capsys):
    window = ("--from", f"{DAY}T12", "--to", f"{DAY}T16")
    assert _cli("query", "placement", "--id", "placement4", *window, "--format", "json") == 0
    lib = [r.as_dict() for r in reader.stats("placement", ["placement4"], "hour", at(12),
                                             at(16))]
    assert json.loads(capsys.readouterr().out) == lib
    assert _cli("query", "placement", "--id", "placement4", *window, "--format", "csv") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("dimension,id,granularity,period_start,views") and len(lines) == 5
    assert _cli("query", "placement", "--id", "placement4", *window) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["period_start", "id", "views"] and len(table) == 6
    assert "speed" in table[-1] and "batch" in table[2]
    assert _cli("top", "banner", "--metric", "clicks", *window, "--limit", "3") == 0
    out = capsys.readouterr()
    assert len(out.out.splitlines()) == 5 and "4 hour(s)" in out.err
    with pytest.raises(QueryError):
        _cli("query", "page", "--from", f"{DAY}T16", "--to", f"{DAY}T12")


# --------------------------------------------------------------------------------------------
# The batch layer catches up: the same query becomes exact (keep these tests last)


def test_day_with_all_hours_recorded_but_not_the_day(loaded, reader, spark, oracle):
    from batch_layer.jobs import run_batch

    run_batch([at(h) for h in range(BATCH_UNTIL, 24)], spark=spark, cfg=loaded, quiet=True)
    expected = _expected(oracle, "placement", "day")
    for r in reader.stats("placement", None, "day", D0, NEXT):
        views, clicks, users = expected[(r.id, D0)]
        assert (r.source, r.counts_exact, r.exact) == ("batch", True, False)
        assert (r.views, r.clicks) == (views, clicks)
        assert r.distinct_users_low <= users <= r.distinct_users_high
    hourly = reader.stats("placement", ["placement0"], "hour", D0, NEXT)
    assert len(hourly) == 24 and {r.source for r in hourly} == {"batch"}
    assert all(r.exact for r in hourly)


def test_after_the_daily_batch_the_day_is_exact(loaded, reader, spark, oracle):
    from batch_layer.jobs import run_batch

    run_batch([], [D0.date()], spark=spark, cfg=loaded, quiet=True)
    expected = _expected(oracle, "placement", "day")
    rows = reader.stats("placement", None, "day", D0, NEXT)
    assert {r.id for r in rows} == {i for i, _ in expected}
    for r in rows:
        assert (r.source, r.exact, r.counts_exact) == ("batch", True, True)
        assert (r.views, r.clicks, r.distinct_users) == expected[(r.id, D0)]
        assert r.distinct_users_low == r.distinct_users == r.distinct_users_high
    result = reader.top("placement", "distinct_users", D0, NEXT, 5)
    assert result.complete and result.distinct_users_exact and result.days == 1
    assert [(r.id, r.distinct_users) for r in result.rows] == sorted(
        ((i, v[2]) for (i, _), v in expected.items()), key=lambda x: (-x[1], x[0]))[:5]
