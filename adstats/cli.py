"""The ``adstats`` command. Subcommands import their layer lazily, so ``adstats stack status``
does not pay for starting pyspark."""

from __future__ import annotations

import argparse
import json
import sys
import time

from adstats.config import settings


def _cmd_stack(args: argparse.Namespace) -> int:
    from adstats.stack import manager

    cfg = settings()
    if args.action == "up":
        began = time.monotonic()
        manager.up(cfg, timeout=args.timeout)
        if not args.no_db_init:
            from serving_layer.schema import init_db

            init_db(cfg)
        print(f"stack up in {time.monotonic() - began:.1f} s — Kafka {cfg.kafka_bootstrap}, "
              f"Cassandra 127.0.0.1:{cfg.cassandra_port}; state in {cfg.state_dir}")
    elif args.action == "down":
        manager.down(cfg)
    elif args.action == "status":
        rows = manager.status(cfg)
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            _print_table(rows, ["service", "pid", "address", "state", "log"])
        return 0 if all(r["state"] == "up" for r in rows) else 3
    elif args.action == "logs":
        if not args.service:
            raise SystemExit("adstats stack logs: name a service (kafka or cassandra)")
        manager.logs(cfg, args.service, args.lines, args.follow)
    return 0


def _cmd_db(args: argparse.Namespace) -> int:
    from serving_layer.schema import init_db

    init_db(settings())
    return 0


def _cmd_jars(args: argparse.Namespace) -> int:
    from adstats.stack import jars

    cfg = settings()
    for component in args.components or jars.COMPONENTS:
        print(f"{component}: {jars.resolve(cfg, component)}")
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    from batch_layer.ingest import ingest, report_json

    report = ingest(args.paths)
    print(report_json(report) if args.json else report.summary())
    return 0


def _cmd_batch(args: argparse.Namespace) -> int:
    from batch_layer.jobs import parse_date, parse_hour, plan_range, run_batch

    if args.action == "hourly":
        if not args.hour:
            raise SystemExit("adstats batch hourly: --hour is required (e.g. 2026-01-01T13)")
        hours, days = [parse_hour(args.hour)], []
    elif args.action == "daily":
        if not args.date:
            raise SystemExit("adstats batch daily: --date is required (e.g. 2026-01-01)")
        hours, days = [], [parse_date(args.date)]
    else:
        if not (args.start and args.end):
            raise SystemExit("adstats batch range: --from and --to are required")
        hours, days = plan_range(parse_hour(args.start), parse_hour(args.end))
    report = run_batch(hours, days)
    print(report.summary())
    return 0


def _cmd_stream(args: argparse.Namespace) -> int:
    from speed_layer.stream import StreamOptions, format_status, read_status, run_stream

    if args.action == "status":
        status = read_status()
        print(json.dumps(status, indent=2) if args.json else format_status(status))
        return 0 if status else 3
    options = StreamOptions(
        watermark=args.watermark, trigger=args.trigger, archive_trigger=args.archive_trigger,
        background_task_records=args.background_task_records or None,
        starting_offsets=args.starting_offsets,
        max_offsets_per_trigger=args.max_offsets_per_trigger,
    )
    return run_stream(options)


def _print_table(rows: list[dict[str, str]], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    print("  ".join("-" * widths[c] for c in columns))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in columns))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adstats", description="Ad efficiency statistics on a lambda architecture."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    stack = sub.add_parser("stack", help="local Kafka + Cassandra: up | down | status | logs")
    stack.add_argument("action", choices=["up", "down", "status", "logs"])
    stack.add_argument("service", nargs="?", help="for logs: kafka or cassandra")
    stack.add_argument("-n", "--lines", type=int, default=50, help="logs: lines to show")
    stack.add_argument("-f", "--follow", action="store_true", help="logs: keep following")
    stack.add_argument("--timeout", type=float, default=180, help="up: seconds per service")
    stack.add_argument("--no-db-init", action="store_true", help="up: skip `adstats db init`")
    stack.add_argument("--json", action="store_true", help="status: print JSON")
    stack.set_defaults(func=_cmd_stack)

    db = sub.add_parser("db", help="Cassandra schema and roles")
    db.add_argument("action", choices=["init"])
    db.set_defaults(func=_cmd_db)

    jar = sub.add_parser("jars", help="resolve the Maven jars into the cache (done on demand)")
    jar.add_argument("components", nargs="*", choices=["kafka", "cassandra", "spark-kafka", []])
    jar.set_defaults(func=_cmd_jars)

    ing = sub.add_parser("ingest", help="load landing CSV files into the master dataset")
    ing.add_argument("paths", nargs="+", metavar="PATH", help="CSV files or folders of them")
    ing.add_argument("--json", action="store_true", help="print the report as JSON")
    ing.set_defaults(func=_cmd_ingest)

    batch = sub.add_parser(
        "batch", help="exact stats from the master dataset into the batch views",
        description="hourly --hour H | daily --date D | range --from H --to H (hours in "
        "[from, to) and every day they touch; for backfills). Hours are UTC, e.g. 2026-01-01T13.",
    )
    batch.add_argument("action", choices=["hourly", "daily", "range"])
    batch.add_argument("--hour", help="hourly: the UTC hour, e.g. 2026-01-01T13")
    batch.add_argument("--date", help="daily: the UTC date, e.g. 2026-01-01")
    batch.add_argument("--from", dest="start", help="range: first hour (inclusive)")
    batch.add_argument("--to", dest="end", help="range: end hour (exclusive)")
    batch.set_defaults(func=_cmd_batch)

    stream = sub.add_parser(
        "stream", help="speed layer: Kafka -> realtime views (runs until Ctrl-C); `status`",
    )
    stream.add_argument("action", nargs="?", choices=["run", "status"], default="run")
    stream.add_argument("--watermark", default="10 minutes",
                        help="how late an event may be and still count (default 10 minutes)")
    stream.add_argument("--trigger", default="1 second",
                        help="micro-batch interval of the realtime view (1 second)")
    stream.add_argument("--archive-trigger", default="10 seconds",
                        help="micro-batch interval of the archive and dead-letter queries "
                             "(10 seconds)")
    stream.add_argument("--background-task-records", type=int, default=25_000,
                        help="messages per archive/dead-letter task at most (short tasks leave "
                             "cores to the realtime view); 0 = one task per Kafka partition "
                             "(25000)")
    stream.add_argument("--starting-offsets", default="earliest",
                        help="where a NEW checkpoint starts: earliest | latest")
    stream.add_argument("--max-offsets-per-trigger", type=int, default=None)
    stream.add_argument("--json", action="store_true", help="status: print JSON")
    stream.set_defaults(func=_cmd_stream)

    gen = sub.add_parser(
        "generate", add_help=False,
        help="generate hourly sample CSV files (utils/generate_sample_data.py; -h for options)",
    )
    gen.add_argument("rest", nargs=argparse.REMAINDER)

    prod = sub.add_parser(
        "produce", add_help=False,
        help="replay CSV files into Kafka as JSON events (utils/produce_events.py; -h for options)",
    )
    prod.add_argument("rest", nargs=argparse.REMAINDER)

    demo = sub.add_parser("demo", add_help=False,
                          help="the whole lambda loop on the local stack; `demo down` stops it")
    demo.add_argument("rest", nargs=argparse.REMAINDER)

    from adstats import airflow_runner  # light: stdlib + adstats.config
    from serving_layer import cli as serving_cli

    serving_cli.register(sub)
    airflow_runner.register(sub)
    return parser


# Subcommands that are whole scripts of their own: their arguments go through untouched
# (argparse's REMAINDER would swallow their -h).
_PASS_THROUGH = {
    "generate": "utils.generate_sample_data",
    "produce": "utils.produce_events",
    "demo": "adstats.demo",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in _PASS_THROUGH:
        import importlib

        module = importlib.import_module(_PASS_THROUGH[argv[0]])
        return module.main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a clear one-line error for users; tracebacks with ADSTATS_DEBUG
        import os

        if os.environ.get("ADSTATS_DEBUG"):
            raise
        print(f"adstats {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
