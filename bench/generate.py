"""Benchmark: vectorised ``utils/generate_sample_data.py`` vs a per-event Python loop.

The loop is modelled on the original generator: for every event one ``random.choice`` /
``random.randint`` per field, the rows sorted by timestamp, then one ``csv.writer.writerow``
per row. Both write into a temporary directory that is removed afterwards.

    python bench/generate.py                                  # 200 000 events x 2 batches each
    python bench/generate.py --events 1000000 --loop-events 200000 --batches 3

Prints a markdown table: implementation, events, seconds, events/s, speed-up over the loop.
"""

from __future__ import annotations

import argparse
import csv
import random
import string
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.generate_sample_data import (  # noqa: E402
    CSV_COLUMNS,
    PLACEMENTS,
    file_name,
    generate,
    positive_int,
)

START = datetime(2024, 1, 1, tzinfo=UTC)


def loop_generate(
    out_dir: Path,
    n_events: int,
    n_banners: int,
    n_pages: int,
    n_batches: int,
    n_users: int,
    seed: int = 0,
) -> int:
    """Per-event pure-Python generator in the style of the original script; returns rows."""
    rnd = random.Random(seed)
    alphabet = string.ascii_letters + string.digits
    users: set[str] = set()
    while len(users) < n_users:
        users.add("".join(rnd.choice(alphabet) for _ in range(10)))
    user_ids = sorted(users)
    banners = [f"banner{i}" for i in range(n_banners)]
    pages = [f"page{i}" for i in range(n_pages)]
    placements = list(PLACEMENTS)
    rows_written = 0
    for b in range(n_batches):
        hour = START + timedelta(hours=b)
        h0 = int(hour.timestamp())
        rows = []
        for _ in range(n_events):
            rows.append((
                rnd.randint(h0, h0 + 3599),
                rnd.choice((0, 1)),
                rnd.choice(banners),
                rnd.choice(placements),
                rnd.choice(pages),
                rnd.choice(user_ids),
            ))
        rows.sort(key=lambda r: r[0])
        with open(out_dir / file_name(hour), "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(CSV_COLUMNS)
            for row in rows:
                writer.writerow(row)
        rows_written += len(rows)
    return rows_written


def _timed(fn, *args, **kwargs) -> float:
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=positive_int, default=200000,
                        help="events per batch for the vectorised generator (200000)")
    parser.add_argument("--loop-events", type=positive_int, default=None,
                        help="events per batch for the Python loop (default: --events)")
    parser.add_argument("--batches", type=positive_int, default=2, help="batches (2)")
    parser.add_argument("--banners", type=positive_int, default=10)
    parser.add_argument("--pages", type=positive_int, default=20)
    parser.add_argument("--users", type=positive_int, default=20000)
    parser.add_argument("--no-extras", action="store_true",
                        help="skip the run with event ids, skew and fault injection")
    args = parser.parse_args(argv)
    loop_events = args.loop_events or args.events
    common = dict(n_banners=args.banners, n_pages=args.pages, n_batches=args.batches,
                  n_users=args.users)

    results: list[tuple[str, int, float]] = []
    with tempfile.TemporaryDirectory(prefix="adstats-bench-") as tmp:
        base = Path(tmp)
        for sub in ("loop", "ours", "ours_extras"):
            (base / sub).mkdir()
        secs = _timed(loop_generate, base / "loop", n_events=loop_events, **common)
        results.append(("python loop (original style)", loop_events * args.batches, secs))
        secs = _timed(generate, base / "ours", n_events=args.events, start=START, seed=0,
                      quiet=True, **common)
        results.append(("numpy + arrow (ours)", args.events * args.batches, secs))
        if not args.no_extras:
            secs = _timed(generate, base / "ours_extras", n_events=args.events, start=START,
                          seed=0, quiet=True, event_id=True, ctr=0.05, skew=1.1,
                          late_fraction=0.01, duplicate_fraction=0.01,
                          malformed_fraction=0.001, **common)
            rows = (args.events + round(0.01 * args.events)) * args.batches
            results.append(("ours + event-id, skew, late/dup/malformed", rows, secs))

    loop_rate = results[0][1] / results[0][2]
    print("| implementation | events | seconds | events/s | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for name, events, secs in results:
        rate = events / secs
        print(f"| {name} | {events:,} | {secs:.2f} | {rate:,.0f} | {rate / loop_rate:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
