"""Benchmark: ``adstats produce`` (utils/produce_events.py) into a running Kafka.

Generates sample CSV files (with ``event_id``) into a temporary directory, creates a temporary
topic on the broker named by ``ADSTATS_KAFKA_BOOTSTRAP`` (default: the dev stack,
127.0.0.1:9092), times :func:`utils.produce_events.produce` into it once per producer
variant, and deletes the topic and the files. It starts nothing itself.

    python bench/produce.py                                   # 500 000 events, tuned defaults
    python bench/produce.py --events 200000 --compression lz4 gzip none --batch-kib 64 256 1024

Prints a markdown table: variant, events, read+validate s, send s, events/s (send phase),
MB/s (JSON values + keys, uncompressed).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adstats.config import settings  # noqa: E402
from utils import produce_events as pe  # noqa: E402
from utils.generate_sample_data import generate, positive_int  # noqa: E402

START = datetime(2024, 1, 1, tzinfo=UTC)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--events", type=positive_int, default=500_000, help="events in total (500000)")
    add("--batches", type=positive_int, default=5, help="CSV files to spread them over (5)")
    add("--partitions", type=positive_int, default=4, help="partitions of the temp topic (4)")
    add("--bootstrap", default=None, help="Kafka bootstrap (default: ADSTATS_KAFKA_BOOTSTRAP)")
    add("--compression", nargs="+", default=[pe.PRODUCER_CONFIG["compression_type"]],
        choices=["lz4", "gzip", "none"], help="codecs to compare")
    add("--batch-kib", nargs="+", type=positive_int,
        default=[pe.PRODUCER_CONFIG["batch_size"] // 1024], help="batch sizes to compare")
    add("--linger-ms", nargs="+", type=int, default=[pe.PRODUCER_CONFIG["linger_ms"]],
        help="linger times to compare")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    bootstrap = args.bootstrap or settings().kafka_bootstrap
    per_file = -(-args.events // args.batches)
    rows = []
    with tempfile.TemporaryDirectory(prefix="adstats-bench-produce-") as tmp:
        generate(tmp, n_events=per_file, n_batches=args.batches, start=START, seed=7,
                 event_id=True)
        events = pe.load_events([tmp])
        payload_mb = (sum(len(v) for v in events.values.to_pylist())
                      + sum(len(k) for k in events.keys.to_pylist())) / 1e6
        del events
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="adstats-bench")
        try:
            for codec, kib, linger in itertools.product(args.compression, args.batch_kib,
                                                        args.linger_ms):
                topic = f"bench-produce-{uuid.uuid4().hex[:8]}"
                admin.create_topics([NewTopic(topic, args.partitions, 1)])
                try:
                    deadline = time.monotonic() + 30  # creation returns before it is visible
                    while topic not in admin.list_topics() and time.monotonic() < deadline:
                        time.sleep(0.1)
                    config = {"compression_type": None if codec == "none" else codec,
                              "batch_size": kib * 1024, "linger_ms": linger}
                    report = pe.produce([tmp], topic=topic, bootstrap=bootstrap,
                                        progress=False, producer_config=config)
                finally:
                    admin.delete_topics([topic])
                send_s = report.sent / report.events_per_s if report.events_per_s else 0.0
                rows.append((f"{codec}, {kib} KiB, linger {linger} ms", report.sent,
                             report.seconds - send_s, send_s, report.events_per_s,
                             payload_mb / send_s if send_s else 0.0))
        finally:
            admin.close()

    print(f"Kafka {bootstrap}, {args.partitions} partitions, acks=all, idempotent\n")
    print("| producer | events | read+validate s | send s | events/s | MB/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, sent, read_s, send_s, rate, mbs in rows:
        print(f"| {name} | {sent:,} | {read_s:.2f} | {send_s:.2f} | {rate:,.0f} | {mbs:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
