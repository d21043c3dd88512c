"""Benchmark: our batch layer (Spark) vs DuckDB computing the same stats from the same files.

    python bench/batch.py                      # 10M events over 24 hourly files
    python bench/batch.py --events 2000000     # smaller

Needs the local stack (``adstats stack up``): our job upserts its rows into Cassandra like in
production. Both sides start from the same landing CSV files (generated with event ids, 1 %
duplicates, 0.1 % malformed rows) and produce hourly and daily views, clicks and exact
distinct users for all three dimensions:

    (a) adstats: ingest (validate, quarantine, dedup, Parquet by hour) + one batch range job
        for the 24 hours and the day (JVM start measured separately and excluded)
    (b) DuckDB: validate + dedup into a table, then the same 6 aggregations

and checks that both give the same rows before printing the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import duckdb  # noqa: E402

from adstats.config import settings  # noqa: E402
from tests.oracle import compute_stats, load_events  # noqa: E402
from utils.generate_sample_data import generate  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--workdir", type=Path, help="keep files here (default: a temp dir)")
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="adstats-bench-batch-"))
    start = datetime(2026, 1, 1, tzinfo=UTC)
    try:
        print(f"generating {args.events:,} events in {args.hours} hourly files ...", flush=True)
        files = generate(
            out_dir=work / "landing", n_events=args.events // args.hours, n_banners=10,
            n_pages=20, n_batches=args.hours, n_users=args.users, start=start, seed=1,
            event_id=True, duplicate_fraction=0.01, malformed_fraction=0.001, quiet=True,
        )
        size_mb = sum(f.stat().st_size for f in files) / 1e6
        results = []

        # (b) DuckDB first: it warms the page cache for both.
        t = time.monotonic()
        con = duckdb.connect()
        n_duck = load_events(con, files)
        duck = compute_stats(con)
        results.append(("DuckDB (CSV -> validated table -> 6 aggregations)", n_duck,
                        time.monotonic() - t))

        # (a) adstats.
        from adstats.spark import spark_session
        from batch_layer.ingest import ingest
        from batch_layer.jobs import plan_range, run_batch

        t = time.monotonic()
        spark = spark_session("adstats-bench")
        spark.range(1).count()
        jvm = time.monotonic() - t
        cfg = dataclasses.replace(settings(), data_dir=work / "data")
        t = time.monotonic()
        report = ingest([work / "landing"], spark=spark, cfg=cfg, quiet=True)
        t_ingest = time.monotonic() - t
        t = time.monotonic()
        hours, days = plan_range(start, start + timedelta(hours=args.hours))
        batch = run_batch(hours, days, spark=spark, cfg=cfg, quiet=True)
        t_batch = time.monotonic() - t
        results.append(("adstats ingest (CSV -> master Parquet)", report.rows_written, t_ingest))
        results.append((f"adstats batch range ({len(hours)} h + {len(days)} d -> Cassandra)",
                        report.rows_written, t_batch))
        results.append(("adstats total", report.rows_written, t_ingest + t_batch))

        _check_same(cfg, duck, batch.run_id)
        print("ingest stages: " + ", ".join(f"{k} {v:.1f} s"
                                            for k, v in report.stage_seconds.items()))
        print(f"\n{args.events:,} events requested, {size_mb:,.0f} MB of CSV, "
              f"{os.cpu_count()} cores; Spark JVM start {jvm:.1f} s (excluded)\n")
        print("| job | events | seconds | events/s | vs DuckDB |")
        print("|---|---:|---:|---:|---:|")
        base = results[0][2]
        for name, n, secs in results:
            print(f"| {name} | {n:,} | {secs:.1f} | {n / secs:,.0f} | {secs / base:.1f}× |")
        spark.stop()
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def _check_same(cfg, duck: dict, run_id: str) -> None:
    """Both sides must agree row for row, or the timing means nothing."""
    from cassandra.query import ValueSequence

    from serving_layer.cassandra_session import writer_session

    buckets: dict[tuple[str, str], set[str]] = {}
    for dim, _, gran, period in duck:
        buckets.setdefault((dim, gran), set()).add(_bucket(gran, period))
    mine = {}
    with writer_session(cfg) as session:
        for (dim, gran), wanted in buckets.items():
            rows = session.execute(
                "SELECT dim_id, period_start, views, clicks, distinct_users, run_id "
                "FROM batch_stats WHERE dimension=%s AND granularity=%s AND bucket IN %s",
                (dim, gran, ValueSequence(sorted(wanted))))
            for r in rows:
                if r.run_id == run_id:
                    epoch = int(r.period_start.replace(tzinfo=UTC).timestamp())
                    mine[(dim, r.dim_id, gran, epoch)] = (r.views, r.clicks, r.distinct_users)
    if mine != duck:
        diff = {k for k in set(mine) | set(duck) if mine.get(k) != duck.get(k)}
        raise SystemExit(f"MISMATCH between adstats and DuckDB on {len(diff)} rows, e.g. "
                         f"{sorted(diff)[:3]}")
    print(f"check: adstats and DuckDB agree on all {len(duck):,} rows")


def _bucket(granularity: str, epoch: int) -> str:
    moment = datetime.fromtimestamp(epoch, UTC)
    return f"{moment:%Y-%m-%d}" if granularity == "hour" else f"{moment:%Y-%m}"


if __name__ == "__main__":
    sys.exit(main())
