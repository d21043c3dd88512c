"""Batch layer on the real stack: ingest -> master dataset -> exact stats -> Cassandra,
checked row for row against an independent DuckDB computation from the same files."""

from __future__ import annotations

import dataclasses
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from batch_layer.ingest import ingest, load_manifest, manifest_path
from batch_layer.jobs import parse_hour, plan_range, run_batch
from serving_layer.cassandra_session import writer_session
from tests.oracle import oracle_event_count, oracle_stats
from utils.generate_sample_data import generate

DAY = "2026-02-01"
T0 = datetime(2026, 2, 1, 10, tzinfo=UTC)  # generated hours 10, 11, 12; 13..23 stay empty


@pytest.fixture(scope="module")
def landing(tmp_path_factory) -> list[Path]:
    """Skewed data with late events, duplicates and malformed rows, an original-format file
    without event ids, and events exactly on hour boundaries."""
    root = tmp_path_factory.mktemp("landing")
    files = generate(
        out_dir=root / "ids", n_events=3000, n_banners=6, n_pages=8, n_batches=3, n_users=500,
        start=T0, seed=11, event_id=True, skew=1.2, late_fraction=0.02,
        duplicate_fraction=0.03, malformed_fraction=0.02, quiet=True,
    )
    files += generate(
        out_dir=root / "original", n_events=1000, n_banners=6, n_pages=8, n_batches=1,
        n_users=500, start=T0, seed=12, quiet=True,
    )
    edge = root / "edges" / "boundaries.csv"
    edge.parent.mkdir()
    h13 = int(datetime(2026, 2, 1, 13, tzinfo=UTC).timestamp())
    edge.write_text(
        "event_id,timestamp,event_type,banner_id,placement_id,page_id,user_id\n"
        f"edge-1,{h13},1,banner0,placement0,page0,edgeuser01\n"      # 13:00:00 -> hour 13
        f"edge-2,{h13 - 1},0,banner0,placement0,page0,edgeuser01\n"  # 12:59:59 -> hour 12
        f"edge-3,{h13 + 3599},0,banner1,placement4,page1,edgeuser02\n"
    )
    return [*files, edge]


@pytest.fixture(scope="module")
def ingested(stack, spark, landing, tmp_path_factory):
    cfg = dataclasses.replace(stack, data_dir=tmp_path_factory.mktemp("data"))
    report = ingest([p.parent for p in landing], spark=spark, cfg=cfg, quiet=True)
    return cfg, report


def _batch_rows(cfg, granularity: str, bucket: str) -> dict:
    with writer_session(cfg) as session:
        rows = []
        for dim in ("placement", "page", "banner"):
            rows += session.execute(
                "SELECT * FROM batch_stats WHERE dimension=%s AND granularity=%s AND bucket=%s",
                (dim, granularity, bucket))
    return {(r.dimension, r.dim_id, r.granularity,
             int(r.period_start.replace(tzinfo=UTC).timestamp())): r for r in rows}


def test_ingest_reports_and_places_by_timestamp(ingested, landing):
    cfg, report = ingested
    assert report.files_new == len(landing)
    assert report.rows_written == oracle_event_count(landing)
    assert report.duplicates_in_input > 0 and sum(report.quarantined.values()) > 0
    assert report.rows_read == report.rows_valid + sum(report.quarantined.values())
    # Late events sit in the hour of their own timestamp, before the first file's hour.
    assert any(h < "2026-02-01T10" for h in report.hours)
    assert report.hours["2026-02-01T13"] == 2  # the two edge events at 13:00:00 and 13:59:59
    # Per-file counts are keyed by path: ids/ and original/ both hold a 10:00 file of one name.
    assert len({p.name for p in landing}) < len(landing)
    manifest = [json.loads(line) for line in manifest_path(cfg).read_text().splitlines()]
    assert {os.path.abspath(e["path"]): e["rows"] for e in manifest} == {
        os.path.abspath(p): sum(1 for _ in p.open()) - 1 for p in landing}


def test_batch_range_equals_duckdb_oracle_row_for_row(ingested, landing, spark):
    cfg, _ = ingested
    hours, days = plan_range(parse_hour(f"{DAY}T00"), parse_hour("2026-02-02T00"))
    report = run_batch(hours, days, spark=spark, cfg=cfg, quiet=True)
    expected = {k: v for k, v in oracle_stats(landing).items()
                if datetime.fromtimestamp(k[3], UTC).strftime("%Y-%m-%d") == DAY}
    got = {**_batch_rows(cfg, "hour", DAY), **_batch_rows(cfg, "day", DAY[:7])}
    got = {k: r for k, r in got.items() if datetime.fromtimestamp(k[3], UTC).date().isoformat()
           == DAY}
    assert set(got) == set(expected)
    mismatches = {k: ((r.views, r.clicks, r.distinct_users), expected[k])
                  for k, r in got.items()
                  if (r.views, r.clicks, r.distinct_users) != expected[k]}
    assert mismatches == {}
    assert all(r.run_id == report.run_id for r in got.values())
    assert sum(v for (g, _), v in report.input_events.items() if g == "hour") == sum(
        v[0] + v[1] for k, v in expected.items() if k[0] == "placement" and k[2] == "hour")


def test_sketch_estimates_within_error_bound(ingested):
    from datasketches import hll_sketch

    cfg, _ = ingested
    for row in _batch_rows(cfg, "day", DAY[:7]).values():
        sketch = hll_sketch.deserialize(bytes(row.users_sketch))
        assert sketch.lg_config_k == 12
        assert sketch.get_lower_bound(2) <= row.distinct_users <= sketch.get_upper_bound(2)


def test_empty_hour_is_recorded_as_zero_not_missing(ingested, spark):
    cfg, _ = ingested
    empty = parse_hour(f"{DAY}T20")
    run_batch([empty], spark=spark, cfg=cfg, quiet=True)
    with writer_session(cfg) as session:
        period = session.execute(
            "SELECT * FROM batch_periods WHERE granularity='hour' AND bucket=%s AND "
            "period_start=%s", (DAY, empty)).one()
        never = session.execute(
            "SELECT * FROM batch_periods WHERE granularity='hour' AND bucket='2030-01-01'").one()
    assert period is not None and period.input_events == 0 and period.output_rows == 0
    assert never is None
    assert not [k for k in _batch_rows(cfg, "hour", DAY) if k[3] == int(empty.timestamp())]


def test_rerunning_an_hour_leaves_identical_rows(ingested, spark):
    cfg, _ = ingested
    hour = parse_hour(f"{DAY}T11")

    def snapshot():
        rows = _batch_rows(cfg, "hour", DAY)
        return {k: (r.views, r.clicks, r.distinct_users, bytes(r.users_sketch))
                for k, r in rows.items() if k[3] == int(hour.timestamp())}

    run_batch([hour], spark=spark, cfg=cfg, quiet=True)
    first = snapshot()
    run_batch([hour], spark=spark, cfg=cfg, quiet=True)
    assert snapshot() == first and first


def test_ingesting_the_same_files_again_adds_nothing(ingested, landing, spark):
    cfg, first = ingested
    again = ingest([p.parent for p in landing], spark=spark, cfg=cfg, quiet=True)
    assert again.files_new == 0 and len(again.files_skipped) == len(landing)
    assert len(load_manifest(cfg)) == len(landing)
    # Even a renamed copy (not in the manifest) adds no event already in the master dataset.
    copy = landing[0].parent.parent / "copy"
    copy.mkdir(exist_ok=True)
    (copy / "renamed.csv").write_bytes(landing[0].read_bytes())
    renamed = ingest([copy], spark=spark, cfg=cfg, quiet=True)
    assert renamed.rows_written == 0 and renamed.already_in_master > 0


def test_each_kind_of_bad_row_is_quarantined_with_reason(stack, spark, tmp_path):
    cfg = dataclasses.replace(stack, data_dir=tmp_path / "data")
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "event_id,timestamp,event_type,banner_id,placement_id,page_id,user_id\n"
        "ok-1,1770000000,0,banner0,placement0,page0,user000001\n"
        "f-1,1770000000,0,banner0,placement0,page0\n"                  # missing field
        "f-2,1770000000,0,banner0,placement0,page0,user000001,extra\n"  # extra field
        "f-3,12.5x,0,banner0,placement0,page0,user000001\n"
        "f-4,1770000000000,0,banner0,placement0,page0,user000001\n"    # milliseconds
        "f-5,1770000000,2,banner0,placement0,page0,user000001\n"
        "f-6,1770000000,1,banner0,placement0,page0,\n"
        "f-7,1770000000,1,,placement0,page0,user000001\n"
        ",1770000000,1,banner0,placement0,page0,user000001\n"
    )
    (tmp_path / "noheader.csv").write_text("")
    report = ingest([bad, tmp_path / "noheader.csv"], spark=spark, cfg=cfg, quiet=True)
    assert report.quarantined == {
        "wrong number of fields": 2, "non-integer timestamp": 1, "timestamp out of range": 1,
        "event_type not 0/1": 1, "empty user_id": 1, "empty banner_id": 1, "empty event_id": 1,
    }
    assert report.rows_written == 1
    assert report.files_rejected == {"noheader.csv": "empty file (no header)"}
    rows = [json.loads(line) for f in Path(report.quarantine_dir, "rows").glob("*.json")
            for line in f.read_text().splitlines()]
    assert sorted(r["event_id"] or "" for r in rows) == [
        "", "f-1", "f-2", "f-3", "f-4", "f-5", "f-6", "f-7"]
    assert all(r["_reason"] and r["_file"] == "bad.csv" for r in rows)
    assert (Path(report.quarantine_dir) / "files" / "noheader.csv.reason").exists()


def test_header_with_byte_order_mark_keeps_event_id(tmp_path):
    # Spreadsheet exports start with a BOM; `adstats produce` reads it as utf-8-sig too.
    from batch_layer.ingest import read_header

    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffevent_id,timestamp,event_type,banner_id,placement_id,page_id,user_id\n"
                     .encode())
    assert read_header(path)[0] == "event_id"


def test_unfinished_periods_are_refused():
    from datetime import timedelta

    from batch_layer.jobs import refuse_unfinished

    now = datetime(2026, 2, 1, 13, 30, tzinfo=UTC)
    refuse_unfinished([now.replace(minute=0) - timedelta(hours=1)], [], now=now)
    with pytest.raises(ValueError, match="hour 2026-02-01T13 has not ended"):
        refuse_unfinished([now.replace(minute=0)], [], now=now)
    with pytest.raises(ValueError, match="day 2026-02-01 has not ended"):
        refuse_unfinished([], [now.date()], now=now)
