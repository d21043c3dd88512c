"""Benchmark: the speed layer (``adstats stream``) on the local stack.

    python bench/stream.py                          # 5 M events catch-up, then 60 s at 5k/s
    python bench/stream.py --events 1000000 --max-offsets-per-trigger 250000
    python bench/stream.py --skip-catchup --rate 5000 --seconds 60

Everything runs on a temporary topic, keyspace (``adstats_bench_<id>``) and state folder, so the
dev stack's data is untouched; all three are removed at the end. It starts ``adstats stream``
itself, as its own process (stopped by its pid), and needs ``adstats stack up``.

(a) **Catch-up.** Generates ``--events`` events (with event ids, no faults) over ``--hours``
    hours of a fixed past day, preloads them into the topic with ``adstats produce`` in
    ``--producers`` processes, then starts the stream from the earliest offsets and polls the
    realtime view until every event is counted (placement totals; each event has exactly one
    placement). Events/s are reported from the moment the queries started (JVM and session
    start excluded, reported separately) and from process start. Then, on the same preloaded
    topic and in this process, plain Spark batch jobs time the pieces the stream is made of —
    reading Kafka, parsing/validating the JSON, the stats aggregation — so the table shows
    what bounds the stream (the rest is streaming overhead: state store, checkpoints,
    three queries reading the topic).
(b) **Freshness.** With the stream caught up (the view, then the archive) and running, sends
    ``--rate`` events/s of current-time events for ``--seconds`` seconds in 100 ms slices,
    while another thread polls the realtime view every ``--poll-ms``. A slice's latency is
    from its first send to the first poll that counts all events up to and including it.
    Prints p50/p90/p99/max.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adstats.config import Settings, settings  # noqa: E402
from adstats.events import to_json_record  # noqa: E402
from serving_layer.cassandra_session import admin_session, writer_session  # noqa: E402
from serving_layer.schema import init_db  # noqa: E402
from speed_layer.stream import read_status  # noqa: E402
from utils.generate_sample_data import generate, positive_int  # noqa: E402
from utils.produce_events import PRODUCER_CONFIG, produce  # noqa: E402

CATCHUP_START = datetime(2025, 7, 1, tzinfo=UTC)  # a day no other data uses
BENCH_KEYSPACE = "adstats_bench"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--events", type=positive_int, default=5_000_000, help="catch-up events (5000000)")
    add("--hours", type=positive_int, default=4, help="hours the catch-up events span (4)")
    add("--producers", type=positive_int, default=2, help="preloading processes (2)")
    add("--max-offsets-per-trigger", type=positive_int, default=None,
        help="passed to adstats stream (default: none, the first micro-batch takes all)")
    add("--trigger", default="1 second", help="micro-batch interval (1 second)")
    add("--archive-trigger", default=None,
        help="archive/dead-letter micro-batch interval (default: adstats stream's)")
    add("--background-task-records", default=None,
        help="archive/dead-letter messages per task (default: adstats stream's)")
    add("--rate", type=positive_int, default=5000, help="freshness: events/s (5000)")
    add("--seconds", type=positive_int, default=60, help="freshness: how long to send (60)")
    add("--poll-ms", type=positive_int, default=100, help="freshness: view poll interval (100)")
    add("--skip-catchup", action="store_true", help="only the freshness part")
    add("--skip-freshness", action="store_true", help="only the catch-up part")
    add("--skip-pieces", action="store_true", help="skip the batch-job breakdown")
    add("--timeout", type=positive_int, default=1800, help="catch-up time limit, s (1800)")
    return parser


class StreamProcess:
    """``adstats stream`` in its own process group, on the bench topic, keyspace and folders."""

    def __init__(self, cfg: Settings, log: Path, extra: Sequence[str]) -> None:
        env = {**os.environ, "ADSTATS_TOPIC": cfg.topic, "ADSTATS_DLQ_TOPIC": cfg.dlq_topic,
               "ADSTATS_KEYSPACE": cfg.keyspace, "ADSTATS_DATA_DIR": str(cfg.data_dir),
               "ADSTATS_STATE_DIR": str(cfg.state_dir)}
        self.log = log
        self.started = time.monotonic()
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "adstats.cli", "stream", *extra], env=env, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)

    def ready(self) -> bool:
        """The queries are started once the driver prints its ``stream: reading`` line."""
        self.check()
        return "stream: reading" in self.log.read_text(errors="replace")

    def check(self) -> None:
        if self.proc.poll() is not None:
            sys.exit(f"adstats stream exited ({self.proc.returncode}):\n"
                     + self.log.read_text(errors="replace")[-3000:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)


class ViewCounter:
    """Sum of views + clicks of the placement rows of ``speed_stats`` for some UTC days."""

    def __init__(self, session) -> None:
        self.session = session
        self.query = session.prepare(
            "SELECT views, clicks FROM speed_stats WHERE dimension='placement' AND "
            "granularity='hour' AND bucket=?")

    def total(self, days: Sequence[str]) -> int:
        return sum(r.views + r.clicks for day in days
                   for r in self.session.execute(self.query, (day,)))


def _wait_for(condition, timeout: float, what: str, stream: StreamProcess, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stream.check()
        if condition():
            return time.monotonic()
        time.sleep(poll)
    sys.exit(f"timed out after {timeout:.0f} s waiting for {what}")


def _produce_files(args: tuple[list[str], str, str]) -> tuple[int, float]:
    files, topic, bootstrap = args
    report = produce(files, topic=topic, bootstrap=bootstrap, progress=False)
    return report.sent, report.seconds


def preload(files: list[Path], cfg: Settings, producers: int) -> tuple[int, float]:
    """Replay the files into the topic with ``produce`` in parallel processes (not timed as
    part of the stream: it bounds nothing but the set-up)."""
    shares = [[str(f) for f in files[i::producers]] for i in range(producers)]
    began = time.monotonic()
    with multiprocessing.get_context("spawn").Pool(producers) as pool:
        sent = sum(n for n, _ in pool.map(
            _produce_files, [(s, cfg.topic, cfg.kafka_bootstrap) for s in shares if s]))
    return sent, time.monotonic() - began


def extra_stream_args(args) -> list[str]:
    extra = ["--archive-trigger", args.archive_trigger] if args.archive_trigger else []
    if args.background_task_records is not None:
        extra += ["--background-task-records", args.background_task_records]
    return extra


def completed_batches(status: dict) -> int:
    batch_id = (status.get("queries", {}).get("realtime") or {}).get("batch_id")
    return 0 if batch_id is None else batch_id + 1


def catch_up(args, cfg: Settings, work: Path, counter: ViewCounter) -> tuple[StreamProcess, dict]:
    per_hour = -(-args.events // args.hours)
    print(f"catch-up: generating {per_hour * args.hours:,} events over {args.hours} h ...",
          file=sys.stderr, flush=True)
    files = generate(work / "landing", n_events=per_hour, n_batches=args.hours,
                     start=CATCHUP_START, seed=11, event_id=True)
    sent, preload_s = preload(files, cfg, args.producers)
    print(f"catch-up: preloaded {sent:,} events in {preload_s:.1f} s "
          f"({sent / preload_s:,.0f}/s with {args.producers} producers); starting the stream",
          file=sys.stderr, flush=True)
    extra = ["--trigger", args.trigger, *extra_stream_args(args)]
    if args.max_offsets_per_trigger:
        extra += ["--max-offsets-per-trigger", str(args.max_offsets_per_trigger)]
    stream = StreamProcess(cfg, work / "stream.log", extra)
    ready = _wait_for(stream.ready, 180, "the stream to start", stream)
    day = f"{CATCHUP_START:%Y-%m-%d}"
    last_report = [time.monotonic()]

    def all_counted() -> bool:
        # Done when every event is either in the view or dropped as late (several producers
        # interleave hours, so with small micro-batches some events fall behind the watermark).
        seen = counter.total([day])
        late = (read_status(cfg) or {}).get("late_count") or 0
        if time.monotonic() - last_report[0] > 10:
            last_report[0] = time.monotonic()
            print(f"catch-up: {seen:,} / {sent:,} counted, {late:,} late, after "
                  f"{time.monotonic() - ready:.0f} s", file=sys.stderr, flush=True)
        return seen + late >= sent

    done = _wait_for(all_counted, args.timeout, "every event in the realtime view", stream)
    status = read_status(cfg) or {}
    counted = counter.total([day])
    # The archive (background pool) finishes later by design: freshness is measured once it has
    # caught up too, i.e. in the steady state.
    archived = _wait_for(lambda: (read_status(cfg) or {}).get("archived_watermark") is not None,
                         args.timeout, "the archive to catch up", stream)
    print(f"catch-up: archive caught up {archived - done:.1f} s after the view",
          file=sys.stderr, flush=True)
    return stream, {"events": sent, "counted": counted,
                    "preload_s": preload_s, "start_s": ready - stream.started,
                    "catchup_s": done - ready, "total_s": done - stream.started,
                    "archive_s": archived - ready,
                    "late": status.get("late_count"), "dlq": status.get("dlq_count"),
                    # The view is updated inside a micro-batch, before Spark reports its
                    # progress: with one catch-up batch, "done" comes before any progress.
                    "batches": completed_batches(status)}


def time_pieces(cfg: Settings) -> list[tuple[str, float, int]]:
    """The stream's pieces as plain Spark batch jobs over the same topic (warm session)."""
    from pyspark.sql import functions as F

    from adstats.spark import spark_session
    from adstats.stats import approximate_stats
    from speed_layer.stream import parse_messages, valid_events

    spark = spark_session("adstats-bench-stream-pieces", cfg)
    messages = (spark.read.format("kafka").option("kafka.bootstrap.servers", cfg.kafka_bootstrap)
                .option("subscribe", cfg.topic).load())
    jobs = [
        ("read Kafka (count)", lambda: messages.count()),
        ("+ parse and validate JSON (count valid)",
         lambda: valid_events(parse_messages(messages)).count()),
        ("+ stats aggregation, no dedup (collect rows)",
         lambda: len(approximate_stats(valid_events(parse_messages(messages))).collect())),
        ("+ dedup by event_id (batch dropDuplicates)",
         lambda: len(approximate_stats(valid_events(parse_messages(messages))
                                       .dropDuplicates(["event_id"])).collect())),
        ("+ archive write (Parquet by hour, no dedup)",
         lambda: valid_events(parse_messages(messages)).drop("event_time")
         .write.mode("overwrite").partitionBy("date", "hour")
         .parquet(str(cfg.data_dir / "pieces-archive"))),
    ]
    messages.select(F.max("offset")).collect()  # warm-up: metadata, codegen
    timings = []
    for name, job in jobs:
        began = time.monotonic()
        result = job()
        timings.append((name, time.monotonic() - began, result if isinstance(result, int) else 0))
    spark.stop()
    return timings


def send_slice(producer, topic: str, count: int, offset: int) -> None:
    """``count`` current-time events, sent and flushed."""
    ts = int(datetime.now(UTC).timestamp())
    for n in range(offset, offset + count):
        record = to_json_record({
            "event_id": uuid.uuid4().hex, "timestamp": ts, "event_type": int(n % 20 == 0),
            "banner_id": f"banner{n % 10}", "placement_id": f"placement{n % 5}",
            "page_id": f"page{n % 20}", "user_id": f"user{n % 20000:06d}"})
        producer.send(topic, key=record["user_id"].encode(),
                      value=json.dumps(record, separators=(",", ":")).encode())
    producer.flush()


def freshness(args, cfg: Settings, counter: ViewCounter, baseline_days: dict[str, int]) -> dict:
    """Steady sends in 100 ms slices; per slice, send time -> first poll that counts it."""
    from kafka import KafkaProducer

    config = {k: v for k, v in PRODUCER_CONFIG.items() if k != "allow_auto_create_topics"}
    producer = KafkaProducer(bootstrap_servers=cfg.kafka_bootstrap, **config)
    per_slice = max(1, args.rate // 10)
    slices: list[tuple[float, int]] = []  # (first send time, cumulative events after it)
    polls: list[tuple[float, int]] = []
    stop = threading.Event()
    days: set[str] = set()

    def poll() -> None:
        while not stop.is_set():
            now = time.monotonic()
            current = sorted(days)
            seen = counter.total(current) - sum(baseline_days.get(d, 0) for d in current)
            polls.append((now, seen))
            stop.wait(args.poll_ms / 1000)

    # Warm-up, not measured: the first micro-batches of current-time events pay for code
    # generation and move the watermark (evicting the catch-up state).
    warm_up = 2000
    send_slice(producer, cfg.topic, warm_up, offset=10**9)
    day = f"{datetime.now(UTC):%Y-%m-%d}"
    deadline = time.monotonic() + 180
    while counter.total([day]) - baseline_days.get(day, 0) < warm_up:
        if time.monotonic() > deadline:
            sys.exit("freshness: the warm-up events never became visible")
        time.sleep(0.2)
    baseline_days = {**baseline_days, day: baseline_days.get(day, 0) + warm_up}
    began = time.monotonic()
    days.add(day)
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    sent, n = 0, 0
    while time.monotonic() - began < args.seconds:
        slice_start = time.monotonic()
        now = datetime.now(UTC)
        days.add(f"{now:%Y-%m-%d}")
        send_slice(producer, cfg.topic, per_slice, offset=n)
        n += per_slice
        sent += per_slice
        slices.append((slice_start, sent))
        time.sleep(max(0.0, 0.1 - (time.monotonic() - slice_start)))
    send_s = time.monotonic() - began
    producer.close()
    deadline = time.monotonic() + 120
    while (not polls or polls[-1][1] < sent) and time.monotonic() < deadline:
        time.sleep(0.2)
    stop.set()
    poller.join()
    latencies, i = [], 0
    for t_send, cumulative in slices:
        while i < len(polls) and (polls[i][0] < t_send or polls[i][1] < cumulative):
            i += 1
        if i == len(polls):
            break
        latencies.append(polls[i][0] - t_send)
    latencies.sort()
    q = (lambda p: latencies[min(len(latencies) - 1, int(p * len(latencies)))]) \
        if latencies else (lambda p: float("nan"))
    return {"events": sent, "rate": sent / send_s, "slices": len(slices),
            "visible": len(latencies), "p50": q(0.50), "p90": q(0.90), "p99": q(0.99),
            "max": latencies[-1] if latencies else float("nan"),
            "mean": statistics.fmean(latencies) if latencies else float("nan")}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    base = settings()
    name = f"bench-stream-{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix="adstats-bench-stream-"))
    # A keyspace of its own per run: dropping and re-creating one name back to back has failed
    # here ("keyspace adstats_bench does not exist" right after creating it).
    keyspace = f"{BENCH_KEYSPACE}_{name.rsplit('-', 1)[1]}"
    cfg = dataclasses.replace(base, keyspace=keyspace, topic=name, dlq_topic=f"{name}-dlq",
                              data_dir=work / "data", state_dir=work / "state")
    init_db(cfg, quiet=True)
    admin = KafkaAdminClient(bootstrap_servers=cfg.kafka_bootstrap, client_id="adstats-bench")
    admin.create_topics([NewTopic(cfg.topic, base.topic_partitions, 1),
                         NewTopic(cfg.dlq_topic, 1, 1)])
    stream: StreamProcess | None = None
    try:
        with writer_session(cfg) as session:
            counter = ViewCounter(session)
            result = pieces = None
            if not args.skip_catchup:
                stream, result = catch_up(args, cfg, work, counter)
                if not args.skip_pieces:
                    print("catch-up done; timing the pieces as batch jobs ...", file=sys.stderr,
                          flush=True)
                    pieces = time_pieces(cfg)
            if not args.skip_freshness:
                if stream is None:
                    # The bench topic is new and empty: "earliest" sees every event sent
                    # from now on ("latest" would skip those sent before the first offsets
                    # are resolved).
                    stream = StreamProcess(cfg, work / "stream.log",
                                           ["--trigger", args.trigger, *extra_stream_args(args)])
                    _wait_for(stream.ready, 180, "the stream to start", stream)
                today = datetime.now(UTC)
                days = [f"{d:%Y-%m-%d}" for d in (today, today + timedelta(days=1))]
                baseline = {d: counter.total([d]) for d in days}
                print(f"freshness: {args.rate:,} events/s for {args.seconds} s ...",
                      file=sys.stderr, flush=True)
                fresh = freshness(args, cfg, counter, baseline)
                fresh["batch_ms"] = (read_status(cfg) or {}).get("realtime_batch_ms") or {}
            print_report(args, result, pieces, None if args.skip_freshness else fresh)
    finally:
        if stream is not None:
            stream.stop()
        admin.delete_topics([cfg.topic, cfg.dlq_topic])
        admin.close()
        with admin_session(cfg) as session:
            session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=120)
        shutil.rmtree(work, ignore_errors=True)
    return 0


def print_report(args, result: dict | None, pieces, fresh: dict | None) -> None:
    if result:
        n = result["events"]
        mopt = args.max_offsets_per_trigger or "none"
        print(f"\n### Catch-up (trigger {args.trigger}, maxOffsetsPerTrigger {mopt})\n")
        print("| measure | events | seconds | events/s |\n|---|---:|---:|---:|")
        print(f"| preload ({args.producers} x adstats produce) | {n:,} | {result['preload_s']:.1f}"
              f" | {n / result['preload_s']:,.0f} |")
        print(f"| stream start (JVM, session, queries) | | {result['start_s']:.1f} | |")
        print(f"| catch-up from queries started | {n:,} | {result['catchup_s']:.1f} | "
              f"{n / result['catchup_s']:,.0f} |")
        print(f"| catch-up from process start | {n:,} | {result['total_s']:.1f} | "
              f"{n / result['total_s']:,.0f} |")
        print(f"| archive caught up, from queries started | {n:,} | {result['archive_s']:.1f}"
              f" | {n / result['archive_s']:,.0f} |")
        print(f"\nrealtime micro-batches completed when done: {result['batches']}; counted in "
              "the view: "
              f"{result['counted']:,}; late: {result['late']}; dead letters: {result['dlq']}")
    if pieces:
        print("\n### The stream's pieces as batch jobs on the same topic (warm session)\n")
        print("| job | seconds | events/s |\n|---|---:|---:|")
        n = result["events"]
        for name, seconds, _ in pieces:
            print(f"| {name} | {seconds:.1f} | {n / seconds:,.0f} |")
    if fresh:
        print(f"\n### Freshness ({fresh['rate']:,.0f} events/s sent for {args.seconds} s, "
              f"poll every {args.poll_ms} ms)\n")
        print("| slices | visible | p50 s | p90 s | p99 s | max s |\n"
              "|---:|---:|---:|---:|---:|---:|")
        print(f"| {fresh['slices']} | {fresh['visible']} | {fresh['p50']:.2f} | "
              f"{fresh['p90']:.2f} | {fresh['p99']:.2f} | {fresh['max']:.2f} |")
        if fresh.get("batch_ms"):
            phases = ", ".join(f"{k} {v:,.0f}" for k, v in fresh["batch_ms"].items() if v)
            print(f"\nrealtime micro-batches with input, median ms per phase: {phases}")


if __name__ == "__main__":
    raise SystemExit(main())
