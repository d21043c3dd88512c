"""``adstats serve | query | top | reconciliation``: the serving layer's subcommands.

``adstats/cli.py`` adds them with ``register(sub)``. Layers are imported inside the handlers, so
``adstats --help`` stays fast. ``query`` and ``top`` call the same library functions as the HTTP
API (serving_layer/merge.py), over a read-only Cassandra session.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Any

_DIMENSIONS = ("placement", "page", "banner")
_METRICS = ("views", "clicks", "ctr", "distinct_users")
_TIME_HELP = "ISO-8601 UTC, e.g. 2026-02-01 or 2026-02-01T13 or 2026-02-01T13:00:00Z"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``serve``, ``query`` and ``top`` to the ``adstats`` command."""
    serve = subparsers.add_parser("serve", help="run the HTTP API (FastAPI + uvicorn)",
                                  description="Serve /v1/stats, /v1/top, /v1/health and /docs.")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (8000)")
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.set_defaults(func=_cmd_serve)

    query = subparsers.add_parser(
        "query", help="merged stats of a dimension (batch + speed views)",
        description="Rows of periods starting in [--from, --to): exact batch rows where the "
        "batch layer has finished the period, speed rows (approximate) elsewhere.")
    query.add_argument("dimension", choices=_DIMENSIONS)
    query.add_argument("--id", dest="ids", action="append", metavar="ID",
                       help="an id (repeat); default: every id with data")
    query.add_argument("--granularity", choices=("hour", "day"), default="hour")
    query.add_argument("--from", dest="start", required=True, help=f"inclusive; {_TIME_HELP}")
    query.add_argument("--to", dest="end", required=True, help=f"exclusive; {_TIME_HELP}")
    query.add_argument("--format", choices=("table", "json", "csv"), default="table")
    query.set_defaults(func=_cmd_query)

    top = subparsers.add_parser("top", help="ids of a dimension ranked by a metric over a range")
    top.add_argument("dimension", choices=_DIMENSIONS)
    top.add_argument("--metric", choices=_METRICS, default="views")
    top.add_argument("--from", dest="start", required=True, help=f"inclusive; {_TIME_HELP}")
    top.add_argument("--to", dest="end", required=True, help=f"exclusive; {_TIME_HELP}")
    top.add_argument("--limit", type=int, default=10)
    top.add_argument("--format", choices=("table", "json", "csv"), default="table")
    top.set_defaults(func=_cmd_top)

    recon = subparsers.add_parser(
        "reconciliation", help="speed layer vs exact batch, per reconciled period",
        description="The records the Airflow DAGs' reconcile step wrote for periods starting "
        "in [--from, --to): count differences (speed - batch) and the distinct-users error.")
    recon.add_argument("--granularity", choices=("hour", "day"), default="hour")
    recon.add_argument("--from", dest="start", required=True, help=f"inclusive; {_TIME_HELP}")
    recon.add_argument("--to", dest="end", required=True, help=f"exclusive; {_TIME_HELP}")
    recon.add_argument("--format", choices=("table", "json", "csv"), default="table")
    recon.set_defaults(func=_cmd_reconciliation)


def _cmd_serve(args: argparse.Namespace) -> int:
    from serving_layer.api import serve

    serve(host=args.host, port=args.port, access_log=args.access_log)
    return 0


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _print(rows: list[dict[str, Any]], columns: list[str], fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(rows, indent=2))
    elif fmt == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=columns, extrasaction="ignore",
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    else:
        cells = [[_fmt(r[c]) for c in columns] for r in rows]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
        print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
        print("  ".join("-" * w for w in widths))
        for row in cells:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


_STATS_COLUMNS = ["period_start", "id", "views", "clicks", "ctr", "distinct_users",
                  "distinct_users_low", "distinct_users_high", "source", "exact"]
_TOP_COLUMNS = ["rank", "id", "views", "clicks", "ctr", "distinct_users", "distinct_users_low",
                "distinct_users_high", "source", "exact"]


def _cmd_query(args: argparse.Namespace) -> int:
    from serving_layer.merge import stats

    rows = [r.as_dict() for r in stats(args.dimension, args.ids, args.granularity, args.start,
                                       args.end)]
    if args.format == "table" and not rows:
        print("no rows (nothing computed in that range yet?)", file=sys.stderr)
        return 0
    columns = _STATS_COLUMNS if args.format == "table" else list(rows[0]) if rows else []
    _print(rows, columns, args.format)
    return 0


def _cmd_top(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from serving_layer.merge import top

    result = top(args.dimension, args.metric, args.start, args.end, args.limit)
    if args.format == "json":
        print(json.dumps(result.as_dict(), indent=2))
        return 0
    rows = [asdict(r) for r in result.rows]
    if args.format == "table":
        print(f"{args.dimension} by {args.metric}, {result.as_dict()['start']} .. "
              f"{result.as_dict()['end']} ({result.days} day(s) + {result.hours} hour(s)): "
              f"{result.note}", file=sys.stderr)
        if not rows:
            print("no rows", file=sys.stderr)
            return 0
    _print(rows, _TOP_COLUMNS if args.format == "table" else list(rows[0]) if rows else [],
           args.format)
    return 0


_RECONCILIATION_COLUMNS = ["period_start", "batch_events", "batch_views", "speed_views",
                           "views_diff", "batch_clicks", "speed_clicks", "clicks_diff",
                           "late_events", "users_exact", "users_estimate", "users_rel_error"]


def _cmd_reconciliation(args: argparse.Namespace) -> int:
    from serving_layer.merge import reconciliation

    rows = reconciliation(args.granularity, args.start, args.end)
    if args.format == "table" and not rows:
        print("no reconciliation records in that range (reconciled by the Airflow DAGs)",
              file=sys.stderr)
        return 0
    columns = _RECONCILIATION_COLUMNS if args.format == "table" else \
        list(rows[0]) if rows else []
    _print(rows, columns, args.format)
    return 0
