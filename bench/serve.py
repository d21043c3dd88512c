"""Benchmark: latency and throughput of the serving API over a week of batch views.

    python bench/serve.py                      # against the local stack (adstats stack up)
    python bench/serve.py --requests 1000 --concurrency 8

Loads a week (7 days x 24 hours x (5 placements + 20 pages + 10 banners)) of exact batch rows
with HLL sketches built in Python (datasketches), plus the daily rows and the batch_periods
records, into the configured keyspace (writer role), on dates no other data uses. Then starts
``adstats serve`` (uvicorn, one process, reader role) on 127.0.0.1 on a free port, and times,
from a client process with ``--concurrency`` threads (httpx, keep-alive):

    (a) GET /v1/stats/placement?id=placement2&granularity=hour   24 hourly rows of one placement
    (b) GET /v1/stats/page?granularity=day                        7 daily rows of all 20 pages
    (c) GET /v1/top/page?metric=distinct_users over the week      7 days of sketches unioned

and the same merges called in-process (no HTTP), one at a time. Prints a markdown table. The
server is stopped by its pid; the bench rows are deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
from datasketches import hll_sketch, hll_union, tgt_hll_type  # noqa: E402

from adstats.config import settings  # noqa: E402
from adstats.stats import HLL_LG_K  # noqa: E402
from serving_layer.views import bucket_of, mark_periods_done, write_batch_rows  # noqa: E402

WEEK_START = datetime(2025, 6, 2, tzinfo=UTC)  # a Monday no other data uses
DAYS = 7
IDS = {"placement": [f"placement{i}" for i in range(5)],
       "page": [f"page{i}" for i in range(20)],
       "banner": [f"banner{i}" for i in range(10)]}


def build_rows(seed: int = 7) -> tuple[list[dict], list[dict]]:
    """Hourly rows (sketches from random user ids) and their daily roll-up (sketch unions)."""
    rng = random.Random(seed)
    hourly, daily = [], []
    for d in range(DAYS):
        day = WEEK_START + timedelta(days=d)
        for dimension, ids in IDS.items():
            for rank, dim_id in enumerate(ids):
                union = hll_union(HLL_LG_K)
                users_day: set[int] = set()
                views_day = clicks_day = 0
                for h in range(24):
                    n = max(20, int(400 / (rank + 1) * rng.uniform(0.7, 1.3)))
                    users = {rng.randrange(50_000) for _ in range(n)}
                    sketch = hll_sketch(HLL_LG_K)
                    for u in users:
                        sketch.update(f"user{u:06d}")
                    union.update(sketch)
                    views = n + rng.randrange(n)
                    clicks = views // rng.randint(15, 40)
                    users_day |= users
                    views_day, clicks_day = views_day + views, clicks_day + clicks
                    hourly.append({
                        "dimension": dimension, "granularity": "hour", "dim_id": dim_id,
                        "period_start": day + timedelta(hours=h), "views": views,
                        "clicks": clicks, "distinct_users": len(users),
                        "users_sketch": sketch.serialize_compact()})
                daily.append({
                    "dimension": dimension, "granularity": "day", "dim_id": dim_id,
                    "period_start": day, "views": views_day, "clicks": clicks_day,
                    "distinct_users": len(users_day),
                    "users_sketch": union.get_result(tgt_hll_type.HLL_8).serialize_compact()})
    return hourly, daily


def load(cfg) -> int:
    from serving_layer.cassandra_session import writer_session

    hourly, daily = build_rows()
    periods = [{"granularity": g, "period_start": p, "run_id": "bench-serve",
                "input_events": 1, "output_rows": 1, "seconds": 0.0}
               for g, step, n in (("hour", timedelta(hours=1), DAYS * 24),
                                  ("day", timedelta(days=1), DAYS))
               for p in (WEEK_START + i * step for i in range(n))]
    with writer_session(cfg) as session:
        written = write_batch_rows(session, hourly + daily, "bench-serve")
        mark_periods_done(session, periods)
    return written


def cleanup(cfg) -> None:
    from serving_layer.cassandra_session import writer_session

    days = [WEEK_START + timedelta(days=d) for d in range(DAYS)]
    with writer_session(cfg) as session:
        for dimension in IDS:
            for day in days:
                session.execute("DELETE FROM batch_stats WHERE dimension=%s AND granularity="
                                "'hour' AND bucket=%s", (dimension, bucket_of("hour", day)))
            for month in sorted({bucket_of("day", d) for d in days}):
                session.execute(
                    "DELETE FROM batch_stats WHERE dimension=%s AND granularity='day' AND "
                    "bucket=%s AND period_start>=%s AND period_start<%s",
                    (dimension, month, days[0], days[-1] + timedelta(days=1)))
        for day in days:
            session.execute("DELETE FROM batch_periods WHERE granularity='hour' AND bucket=%s",
                            (bucket_of("hour", day),))
            session.execute("DELETE FROM batch_periods WHERE granularity='day' AND bucket=%s "
                            "AND period_start=%s", (bucket_of("day", day), day))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(port: int) -> subprocess.Popen:
    code = f"from serving_layer.api import serve; serve(host='127.0.0.1', port={port})"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=os.environ.copy())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("server did not start within 60 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc), to report the server's CPU per request."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def run_http(base: str, path: str, params: dict, requests: int, concurrency: int,
             warmup: int = 50) -> dict:
    latencies: list[float] = []
    errors = 0
    rows = 0
    lock = threading.Lock()
    counter = iter(range(requests))

    def worker() -> None:
        nonlocal errors, rows
        with httpx.Client(base_url=base, timeout=30) as client:
            for _ in range(warmup // concurrency + 1):
                client.get(path, params=params)
            while True:
                with lock:
                    if next(counter, None) is None:
                        return
                began = time.perf_counter()
                resp = client.get(path, params=params)
                took = time.perf_counter() - began
                with lock:
                    latencies.append(took)
                    if resp.status_code != 200:
                        errors += 1
                    else:
                        rows = len(resp.json()["rows"])

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    return {"n": len(latencies), "p50": percentile(latencies, 50) * 1000,
            "p99": percentile(latencies, 99) * 1000, "rps": len(latencies) / wall,
            "errors": errors, "rows": rows}


def run_library(cfg, call, requests: int) -> dict:
    from serving_layer.cassandra_session import reader_session
    from serving_layer.merge import StatsReader

    with reader_session(cfg) as session:
        reader = StatsReader(session)
        for _ in range(20):
            out = call(reader)
        latencies = []
        for _ in range(requests):
            began = time.perf_counter()
            out = call(reader)
            latencies.append(time.perf_counter() - began)
    rows = len(out.rows) if hasattr(out, "rows") else len(out)
    return {"n": len(latencies), "p50": percentile(latencies, 50) * 1000,
            "p99": percentile(latencies, 99) * 1000, "rps": 1 / statistics.mean(latencies),
            "errors": 0, "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per case")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--keep", action="store_true", help="keep the bench rows afterwards")
    args = parser.parse_args()
    cfg = settings()
    began = time.monotonic()
    print(f"loading a week of batch rows into {cfg.keyspace} ...", file=sys.stderr, flush=True)
    written = load(cfg)
    print(f"{written:,} rows in {time.monotonic() - began:.1f} s", file=sys.stderr, flush=True)
    first, last = WEEK_START, WEEK_START + timedelta(days=DAYS)
    day3 = WEEK_START + timedelta(days=3)
    cases = [
        ("(a) 24 hourly rows, one placement", "/v1/stats/placement",
         {"id": "placement2", "granularity": "hour", "from": day3.isoformat(),
          "to": (day3 + timedelta(days=1)).isoformat()},
         lambda r: r.stats("placement", ["placement2"], "hour", day3, day3 + timedelta(1))),
        ("(b) 7 daily rows, all 20 pages", "/v1/stats/page",
         {"granularity": "day", "from": first.isoformat(), "to": last.isoformat()},
         lambda r: r.stats("page", None, "day", first, last)),
        ("(c) top 10 pages by distinct users, week", "/v1/top/page",
         {"metric": "distinct_users", "from": first.isoformat(), "to": last.isoformat()},
         lambda r: r.top("page", "distinct_users", first, last, 10)),
    ]
    port = free_port()
    results = []
    proc = start_server(port)
    try:
        base = f"http://127.0.0.1:{port}"
        for name, path, params, _call in cases:
            print(f"HTTP {name} ...", file=sys.stderr, flush=True)
            n = args.requests if not name.startswith("(c)") else max(100, args.requests // 4)
            cpu = cpu_seconds(proc.pid)
            result = run_http(base, path, params, n, args.concurrency)
            result["cpu"] = (cpu_seconds(proc.pid) - cpu) / result["n"] * 1000
            results.append((name, "HTTP", args.concurrency, result))
            if name.startswith("(a)"):  # the latency floor: one request at a time
                results.append((name, "HTTP", 1, run_http(base, path, params, n // 2, 1)))
    finally:
        stop_server(proc)
    for name, _, _, call in cases:
        print(f"in-process {name} ...", file=sys.stderr, flush=True)
        results.append((name, "library", 1, run_library(cfg, call, max(100, args.requests // 4))))
    if not args.keep:
        cleanup(cfg)

    print(f"\nServing API on {os.cpu_count()} cores, Cassandra {cfg.cassandra_hosts[0]}:"
          f"{cfg.cassandra_port} (keyspace {cfg.keyspace}), a week of batch rows; client and "
          "server on the same machine.\n")
    print("| query | via | concurrency | requests | rows | p50 ms | p99 ms | req/s | errors "
          "| server CPU ms/req |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, via, conc, r in results:
        cpu = f"{r['cpu']:.2f}" if "cpu" in r else ""
        print(f"| {name} | {via} | {conc} | {r['n']} | {r['rows']} | {r['p50']:.1f} | "
              f"{r['p99']:.1f} | {r['rps']:.0f} | {r['errors']} | {cpu} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
