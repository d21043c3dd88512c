"""Generate one or more batches (CSV tables) of ad sample data, one clock hour per batch.

Run it from the repository root::

    python utils/generate_sample_data.py                      # 10 x 100 000 events, last hour = now
    python utils/generate_sample_data.py -e 1000000 -t 3 --seed 42 --start 2024-01-01T00
    python utils/generate_sample_data.py --event-id --ctr 0.05 --skew 1.1 \\
        --late-fraction 0.01 --duplicate-fraction 0.01 --malformed-fraction 0.001 --out /tmp/ads

or as a module: ``python -m utils.generate_sample_data -h``.

Each batch is one CSV file with a header, named ``YYYY-MM-DD_hh-00-00_sample_data.csv`` after
the UTC hour ``[hh:00:00, hh+1:00:00)`` it covers; batches cover consecutive hours and are
written to ``data/sample_data/`` unless ``--out`` says otherwise. Columns::

    [event_id,]timestamp,event_type,banner_id,placement_id,page_id,user_id

``timestamp`` is an integer epoch second (UTC), ``event_type`` is 0 (view) or 1 (click).
Rows are in arrival order, which equals timestamp order unless faults are injected: a late row
(``--late-fraction``) keeps its arrival position but carries a timestamp 1-3 hours before the
file's hour, and a duplicate (``--duplicate-fraction``) is re-delivered later in the same hour.

Generation is vectorised (NumPy for the random columns, Arrow compute kernels to format the
CSV text), so it writes well over a million events per second; only the few malformed rows
(``--malformed-fraction``) are built in Python.
"""

from __future__ import annotations

import argparse
import string
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

CSV_COLUMNS: tuple[str, ...] = (
    "timestamp",
    "event_type",
    "banner_id",
    "placement_id",
    "page_id",
    "user_id",
)
EVENT_ID_COLUMN = "event_id"
PLACEMENTS: tuple[str, ...] = tuple(f"placement{i}" for i in range(5))
DEFAULT_OUT_DIR = Path("data/sample_data")
FILE_NAME_FORMAT = "%Y-%m-%d_%H-00-00_sample_data.csv"
USER_ID_LENGTH = 10
USER_ID_ALPHABET = string.ascii_letters + string.digits
EVENT_ID_LENGTH = 16
HOUR = 3600
LATE_MIN_SECONDS = 1 * HOUR
LATE_MAX_SECONDS = 3 * HOUR

#: Kinds of malformed rows, assigned in turn (in file order) to the rows picked as malformed.
MALFORMED_KINDS: tuple[str, ...] = (
    "missing_field",  # the last column (user_id) is missing
    "bad_timestamp",  # timestamp is not an integer ("12.5x", "abc")
    "bad_event_type",  # event_type is neither 0 nor 1 (2, 7)
    "empty_user_id",  # user_id is empty
    "empty_dimension",  # banner_id, placement_id or page_id is empty (in turn)
    "garbage",  # a line of random text: one field, no commas
)

_CHUNK_ROWS = 1 << 20  # rows formatted per Arrow call (keeps string offsets well below 2**31)
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_ALNUM = np.frombuffer(USER_ID_ALPHABET.encode(), dtype=np.uint8)


# --------------------------------------------------------------------------- argument types
def positive_int(text: str) -> int:
    """argparse ``type=``: an integer > 0."""
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def probability(text: str) -> float:
    """argparse ``type=``: a float strictly between 0 and 1."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got {text!r}")
    return value


def fraction(text: str) -> float:
    """argparse ``type=``: a float in [0, 1)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """argparse ``type=``: a finite float >= 0."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}") from None
    if not (value >= 0.0 and np.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def seed_int(text: str) -> int:
    """argparse ``type=``: a non-negative integer seed."""
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return value


def utc_hour(text: str) -> datetime:
    """argparse ``type=``: a whole UTC hour, e.g. ``2024-01-01T05`` or ``2024-01-01 05:00``.

    Naive values are taken as UTC; values with an offset are converted to UTC.
    """
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be an ISO date-time hour such as 2024-01-01T05, got {text!r}"
        ) from None
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if (value.minute, value.second, value.microsecond) != (0, 0, 0):
        raise argparse.ArgumentTypeError(f"must be a whole hour (HH:00:00), got {text!r}")
    return value


# --------------------------------------------------------------------------- parser / main
def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (the original options plus optional extras)."""
    parser = argparse.ArgumentParser(
        description=(
            "Generate one or more batches (tables) with ad sample data spanning one hour."
        ),
    )
    add = parser.add_argument
    add("-e", "--n-events", type=positive_int, default=100000,
        help="Number of events to be generated (100000)")
    add("-b", "--n-banners", type=positive_int, default=10,
        help="Number of banners to be generated (10)")
    add("-p", "--n-pages", type=positive_int, default=20,
        help="Number of pages to be generated (20)")
    add("-t", "--n-batches", type=positive_int, default=10,
        help="Number of data batches (tables) to be generated (10)")
    add("-u", "--n-users", type=positive_int, default=20000,
        help="Number of user_ids to be generated (20000)")

    extra = parser.add_argument_group("additions (all optional; defaults match the original)")
    add = extra.add_argument
    add("--out", type=Path, default=DEFAULT_OUT_DIR, metavar="DIR",
        help=f"output directory, created if missing ({DEFAULT_OUT_DIR})")
    add("--start", type=utc_hour, default=None, metavar="YYYY-MM-DDTHH",
        help="UTC hour of the first batch (default: the last batch is the current UTC hour)")
    add("--seed", type=seed_int, default=None, metavar="INT",
        help="random seed: identical arguments give byte-identical files (default: random)")
    add("--event-id", action="store_true",
        help="add a unique event_id column (first column)")
    add("--ctr", type=probability, default=None, metavar="P",
        help="probability that an event is a click, in (0, 1) (default: 50/50)")
    add("--skew", type=non_negative_float, default=0.0, metavar="S",
        help="Zipf-like popularity of placements, pages, banners and users: the k-th item "
             "has weight 1/(k+1)**S (default 0: uniform)")
    add("--late-fraction", type=fraction, default=0.0, metavar="F",
        help="share of rows per file whose timestamp is 1-3 hours before the file's hour")
    add("--duplicate-fraction", type=fraction, default=0.0, metavar="F",
        help="extra rows per file (as a share of -e) that exactly repeat another row of the "
             "file; implies --event-id")
    add("--malformed-fraction", type=fraction, default=0.0, metavar="F",
        help="share of rows per file replaced by malformed rows (" + ", ".join(MALFORMED_KINDS)
             + ")")
    add("-q", "--quiet", action="store_true", help="print nothing but warnings and errors")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.late_fraction + args.malformed_fraction > 1.0:
        parser.error("--late-fraction + --malformed-fraction must not exceed 1")
    event_id = args.event_id
    if args.duplicate_fraction > 0 and not event_id:
        print("note: --duplicate-fraction implies --event-id; adding the event_id column",
              file=sys.stderr)
        event_id = True
    generate(
        out_dir=args.out,
        n_events=args.n_events,
        n_banners=args.n_banners,
        n_pages=args.n_pages,
        n_batches=args.n_batches,
        n_users=args.n_users,
        start=args.start,
        seed=args.seed,
        event_id=event_id,
        ctr=args.ctr,
        skew=args.skew,
        late_fraction=args.late_fraction,
        duplicate_fraction=args.duplicate_fraction,
        malformed_fraction=args.malformed_fraction,
        quiet=args.quiet,
    )
    return 0


# --------------------------------------------------------------------------- generation
def default_start(n_batches: int, now: datetime | None = None) -> datetime:
    """First hour such that the last of ``n_batches`` hours is the current UTC hour."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    last = now.replace(minute=0, second=0, microsecond=0)
    return last - timedelta(hours=n_batches - 1)


def file_name(hour_start: datetime) -> str:
    """``YYYY-MM-DD_hh-00-00_sample_data.csv`` for the UTC hour starting at ``hour_start``."""
    return hour_start.astimezone(UTC).strftime(FILE_NAME_FORMAT)


def generate(
    out_dir: str | Path = DEFAULT_OUT_DIR,
    n_events: int = 100000,
    n_banners: int = 10,
    n_pages: int = 20,
    n_batches: int = 10,
    n_users: int = 20000,
    start: datetime | None = None,
    seed: int | None = None,
    event_id: bool = False,
    ctr: float | None = None,
    skew: float = 0.0,
    late_fraction: float = 0.0,
    duplicate_fraction: float = 0.0,
    malformed_fraction: float = 0.0,
    quiet: bool = True,
) -> list[Path]:
    """Write ``n_batches`` hourly CSV files into ``out_dir``; return their paths in hour order.

    ``duplicate_fraction > 0`` forces ``event_id`` on (duplicates share the event_id of the
    row they copy). ``start`` is the first hour (naive = UTC; must be a whole hour); ``None``
    makes the last batch the current UTC hour. Each file holds
    ``n_events + round(duplicate_fraction * n_events)`` rows.
    """
    for name, value in (("n_events", n_events), ("n_banners", n_banners),
                        ("n_pages", n_pages), ("n_batches", n_batches), ("n_users", n_users)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if ctr is not None and not 0.0 < ctr < 1.0:
        raise ValueError(f"ctr must be in (0, 1), got {ctr!r}")
    if not (skew >= 0.0 and np.isfinite(skew)):
        raise ValueError(f"skew must be >= 0, got {skew!r}")
    for name, value in (("late_fraction", late_fraction),
                        ("duplicate_fraction", duplicate_fraction),
                        ("malformed_fraction", malformed_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    if late_fraction + malformed_fraction > 1.0:
        raise ValueError("late_fraction + malformed_fraction must not exceed 1")
    if seed is not None and seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed!r}")
    event_id = bool(event_id or duplicate_fraction > 0)

    if start is None:
        start = default_start(n_batches)
    else:
        start = start.replace(tzinfo=UTC) if start.tzinfo is None else start.astimezone(UTC)
        if (start.minute, start.second, start.microsecond) != (0, 0, 0):
            raise ValueError(f"start must be a whole hour, got {start.isoformat()}")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    say: Callable[[str], None] = (lambda _msg: None) if quiet else print

    # Dimension pools, formatted once. The user_id pool carries the line terminator, so
    # joining the columns with "," yields complete lines.
    banners = pa.array([f"banner{i}" for i in range(n_banners)], pa.string())
    pages = pa.array([f"page{i}" for i in range(n_pages)], pa.string())
    placements = pa.array(list(PLACEMENTS), pa.string())
    user_ids = make_user_ids(rng, n_users)
    users_nl = pa.array([u + "\n" for u in user_ids], pa.string())
    event_types = pa.array(["0", "1"], pa.string())
    pickers = {
        "banner": _picker(n_banners, skew),
        "placement": _picker(len(PLACEMENTS), skew),
        "page": _picker(n_pages, skew),
        "user": _picker(n_users, skew),
    }
    id_base = rng.integers(0, np.iinfo(np.uint64).max, dtype=np.uint64, endpoint=True)
    columns = ((EVENT_ID_COLUMN,) if event_id else ()) + CSV_COLUMNS
    header = (",".join(columns) + "\n").encode()

    n_late = int(round(late_fraction * n_events))
    n_malformed = int(round(malformed_fraction * n_events))
    n_dup = int(round(duplicate_fraction * n_events))

    t0 = time.perf_counter()
    paths: list[Path] = []
    total_rows = 0
    for b in range(n_batches):
        hour_start = start + timedelta(hours=b)
        h0 = int(hour_start.timestamp())
        n = n_events

        # -- arrival order: second within the hour, sorted (int16 -> radix sort).
        second = np.sort(rng.integers(0, HOUR, n, dtype=np.int16), kind="stable")
        ts = second.astype(np.int64) + h0
        et = _event_types(rng, n, ctr)
        cols = {name: pick(rng, n) for name, pick in pickers.items()}
        ids = _event_ids(id_base, b * n_events, n) if event_id else None

        # -- faults: disjoint malformed / late rows; duplicates copy non-malformed rows.
        malformed = np.zeros(n, dtype=bool)
        if n_late or n_malformed or n_dup:
            perm = rng.permutation(n)
            malformed[perm[:n_malformed]] = True
            late_rows = perm[n_malformed:n_malformed + n_late]
            ts[late_rows] -= rng.integers(
                LATE_MIN_SECONDS, LATE_MAX_SECONDS, late_rows.size, endpoint=True
            )
            pool = perm[n_malformed:]
            if n_dup and pool.size:
                src = pool[rng.integers(0, pool.size, n_dup)]
                # re-delivered at a later (or the same) second of the same hour
                dup_second = rng.integers(second[src], HOUR, dtype=np.int16)
                order = np.argsort(np.concatenate([second, dup_second]), kind="stable")
                take = np.concatenate([np.arange(n), src])[order]
                ts, et = ts[take], et[take]
                cols = {k: v[take] for k, v in cols.items()}
                ids = ids[take] if ids is not None else None
                malformed = malformed[take]

        rows = ts.size
        path = out / file_name(hour_start)
        with open(path, "wb") as fh:
            fh.write(header)
            for lo in range(0, rows, _CHUNK_ROWS):
                hi = min(lo + _CHUNK_ROWS, rows)
                parts = []
                if ids is not None:
                    parts.append(_hex_strings(ids[lo:hi]))
                parts += [
                    pc.cast(pa.array(ts[lo:hi]), pa.string()),
                    event_types.take(pa.array(et[lo:hi])),
                    banners.take(pa.array(cols["banner"][lo:hi])),
                    placements.take(pa.array(cols["placement"][lo:hi])),
                    pages.take(pa.array(cols["page"][lo:hi])),
                    users_nl.take(pa.array(cols["user"][lo:hi])),
                ]
                lines = pc.binary_join_element_wise(*parts, ",")
                bad = np.flatnonzero(malformed[lo:hi])
                if bad.size:
                    # kinds cycle in file order across the whole file
                    first_kind = int(np.count_nonzero(malformed[:lo]))
                    repl = [
                        _malformed_line(
                            MALFORMED_KINDS[(first_kind + j) % len(MALFORMED_KINDS)],
                            first_kind + j,
                            [p[i].as_py() for p in parts],
                            event_id,
                            rng,
                        )
                        for j, i in enumerate(bad.tolist())
                    ]
                    mask = np.zeros(hi - lo, dtype=bool)
                    mask[bad] = True
                    lines = pc.replace_with_mask(lines, pa.array(mask), pa.array(repl, pa.string()))
                fh.write(_string_payload(lines))
        paths.append(path)
        total_rows += rows
        say(f"wrote {path} ({rows} rows)")

    elapsed = time.perf_counter() - t0
    rate = total_rows / elapsed if elapsed > 0 else float("inf")
    say(f"{total_rows} events in {len(paths)} files, {elapsed:.2f} s, {rate:,.0f} events/s")
    return paths


# --------------------------------------------------------------------------- helpers
def make_user_ids(rng: np.random.Generator, n_users: int) -> list[str]:
    """``n_users`` distinct random 10-character ``[A-Za-z0-9]`` strings (generation order)."""
    if n_users > len(_ALNUM) ** USER_ID_LENGTH:  # pragma: no cover - 8e17
        raise ValueError("too many users for 10-character ids")
    found: dict[bytes, None] = {}
    while len(found) < n_users:
        need = n_users - len(found)
        raw = _ALNUM[rng.integers(0, len(_ALNUM), (need, USER_ID_LENGTH))]
        for uid in raw.view(f"S{USER_ID_LENGTH}").ravel().tolist():
            found.setdefault(uid, None)
    return [uid.decode() for uid in list(found)[:n_users]]


def _picker(n_items: int, skew: float) -> Callable[[np.random.Generator, int], np.ndarray]:
    """Sampler of item indices: uniform, or weight of item k proportional to 1/(k+1)**skew."""
    dtype = np.int32
    if skew == 0 or n_items == 1:
        return lambda rng, n: rng.integers(0, n_items, n, dtype=dtype)
    cdf = np.cumsum(1.0 / np.arange(1, n_items + 1, dtype=np.float64) ** skew)
    cdf /= cdf[-1]

    def pick(rng: np.random.Generator, n: int) -> np.ndarray:
        idx = np.searchsorted(cdf, rng.random(n), side="right").astype(dtype)
        return np.minimum(idx, n_items - 1, out=idx)

    return pick


def _event_types(rng: np.random.Generator, n: int, ctr: float | None) -> np.ndarray:
    if ctr is None:
        return rng.integers(0, 2, n, dtype=np.int8)
    return (rng.random(n) < ctr).astype(np.int8)


def _event_ids(base: np.uint64, first: int, n: int) -> np.ndarray:
    """Unique 64-bit ids: splitmix64 finaliser (a bijection) of ``base + counter``."""
    with np.errstate(over="ignore"):
        z = np.arange(first, first + n, dtype=np.uint64) + np.uint64(base)
        z ^= z >> np.uint64(30)
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return z


def _hex_strings(values: np.ndarray) -> pa.Array:
    """uint64 array -> Arrow string array of 16 lower-case hex digits each."""
    n = values.size
    shifts = np.arange(60, -4, -4, dtype=np.uint64)
    nibbles = ((values[:, None] >> shifts) & np.uint64(0xF)).astype(np.uint8)
    data = np.ascontiguousarray(_HEX[nibbles])
    offsets = np.arange(0, (n + 1) * EVENT_ID_LENGTH, EVENT_ID_LENGTH, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))


def _string_payload(arr: pa.Array) -> memoryview:
    """The concatenated bytes of a (null-free) Arrow string array, without copying."""
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)
    lo, hi = int(offsets[arr.offset]), int(offsets[arr.offset + len(arr)])
    return memoryview(arr.buffers()[2])[lo:hi]


_GARBAGE = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz0123456789 #;:!?", dtype=np.uint8)


def _malformed_line(
    kind: str, k: int, fields: list[str], with_id: bool, rng: np.random.Generator
) -> str:
    """A one-line, still valid CSV, malformed row of ``kind`` built from a good row's fields.

    ``fields`` are the formatted columns of the good row (user_id ends with a newline).
    ``k`` is the running number of the malformed row in its file (used to vary details).
    """
    values = [f.rstrip("\n") for f in fields]
    o = 1 if with_id else 0  # index of the timestamp column
    if kind == "missing_field":
        values = values[:-1]
    elif kind == "bad_timestamp":
        values[o] = ("12.5x", "abc")[k // len(MALFORMED_KINDS) % 2]
    elif kind == "bad_event_type":
        values[o + 1] = ("2", "7")[k // len(MALFORMED_KINDS) % 2]
    elif kind == "empty_user_id":
        values[-1] = ""
    elif kind == "empty_dimension":
        values[o + 2 + k // len(MALFORMED_KINDS) % 3] = ""
    elif kind == "garbage":
        length = int(rng.integers(5, 40))
        text = _GARBAGE[rng.integers(0, _GARBAGE.size, length)].tobytes().decode()
        return "garbage " + text.strip() + "\n"
    else:  # pragma: no cover
        raise ValueError(kind)
    return ",".join(values) + "\n"


if __name__ == "__main__":
    sys.exit(main())
