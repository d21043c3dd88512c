"""Replay ad-event CSV files into Kafka, in timestamp order (the speed layer's input).

Usage::

    adstats produce FILE|DIR [FILE|DIR ...] [--rate EVENTS_PER_S] [--speedup X] [--topic T]
                    [--bootstrap HOST:PORT] [--timeout SECONDS] [--dry-run] [-q]

    adstats produce data/sample_data                        # every *.csv in the folder, max speed
    adstats produce data/sample_data --rate 2000            # at most 2 000 events per second
    adstats produce a.csv b.csv --speedup 60                # scaled real time: 1 h of data in 1 min
    python -m utils.produce_events data/sample_data --dry-run   # read and validate only

Input files are CSV with a header naming the columns ``[event_id,]timestamp,event_type,
banner_id,placement_id,page_id,user_id`` (see ``utils/generate_sample_data.py``); a directory
stands for all ``*.csv`` files directly inside it, in name order. Every row is checked against
the event contract (:func:`adstats.events.rejection_reason_py`); rows that break it, and lines
with the wrong number of fields, are counted, reported (file, line, reason) and never sent.
A file without an ``event_id`` column gets the deterministic
:func:`adstats.events.derived_event_id_py` ids (the batch layer derives the same ones).

Valid rows of all files are merged and sent in timestamp order (a stable sort: ties keep file
order, then row order) as compact JSON objects, keyed by ``user_id``, with an idempotent
``acks=all`` producer, so retries neither duplicate nor reorder events within a partition.
Only events acknowledged by Kafka count as sent. If Kafka stays unreachable for longer than
``--timeout`` seconds the command stops with exit code 1 and says how many events were
confirmed sent and that the rest were NOT. Exit codes: 0 done, 1 Kafka failure, 2 bad
arguments or input, 130 interrupted.

``--rate N`` caps the send rate (a token bucket refilled N times per second, at most 0.1 s of
burst). ``--speedup X`` replays in scaled real time: the event with timestamp ``t`` is sent at
wall time ``start + (t - t0) / X`` (``t0``: the first timestamp). With both, events follow the
scaled schedule but never faster than ``--rate`` (a backlog then drains at the rate cap).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

from adstats.events import (
    CSV_FIELDS,
    EVENT_ID,
    FIELDS,
    ID_FIELDS,
    MAX_TIMESTAMP,
    MIN_TIMESTAMP,
    derived_event_id_py,
    rejection_reason_py,
    to_json_record,
)

DEFAULT_TIMEOUT = 60.0
MAX_EXAMPLES = 5
WRONG_FIELDS = "wrong number of fields"
CHUNK = 2000  # records handed to the producer between rate / progress / ack checks
MAX_PENDING = 100_000  # records handed over but not yet acknowledged before send() waits
PROGRESS_EVERY = 0.5  # seconds between progress updates on a terminal
PROGRESS_EVERY_LOG = 10.0  # ... and when stderr is a file or pipe

#: Producer settings tuned for throughput with safe delivery (see bench/produce.py).
PRODUCER_CONFIG: dict[str, Any] = {
    "acks": "all",
    "enable_idempotence": True,  # the broker drops duplicates of retried batches
    "max_in_flight_requests_per_connection": 5,  # the most idempotence keeps ordered
    "retry_backoff_ms": 200,  # retries are bounded by delivery_timeout_ms (--timeout)
    "reconnect_backoff_ms": 100,
    "reconnect_backoff_max_ms": 1000,  # notice a restarted broker within a second
    "linger_ms": 20,
    "batch_size": 256 * 1024,
    "compression_type": "lz4",
    "allow_auto_create_topics": False,
}

# Rows whose values all match these are valid by construction and need no JSON escaping, so
# they are validated and formatted with Arrow kernels; every other row goes through
# rejection_reason_py / json.dumps one by one (tests check both paths give the same bytes).
_PLAIN_ID = r"^[\x21\x23-\x5b\x5d-\x7e]+$"  # printable ASCII except space, '"' and '\'
_DIGITS = r"^[0-9]{1,18}$"


class _Unavailable(Exception):
    """Kafka or the topic cannot be used (raised before anything is sent)."""


class InputError(ValueError):
    """Unusable input: missing path, no CSV files, unreadable file (exit code 2)."""


class ProduceError(RuntimeError):
    """Kafka did not take all events; ``report`` says how many were confirmed sent."""

    def __init__(self, message: str, report: ProduceReport, exit_code: int = 1) -> None:
        super().__init__(message)
        self.report = report
        self.exit_code = exit_code


@dataclass
class ProduceReport:
    """What a replay did. ``sent`` counts only events acknowledged by Kafka."""

    sent: int = 0
    skipped: int = 0
    skipped_examples: list[tuple[str, int, str]] = field(default_factory=list)
    seconds: float = 0.0
    events_per_s: float = 0.0
    total: int = 0  # valid events to send
    files: int = 0
    skipped_reasons: dict[str, int] = field(default_factory=dict)
    topic: str = ""

    def summary(self) -> str:
        """The final one-line report."""
        return (
            f"{self.sent:,} events sent to {self.topic or '(dry run)'}, "
            f"{self.skipped:,} skipped, {self.seconds:.2f} s, {self.events_per_s:,.0f} events/s"
        )


@dataclass
class Events:
    """The valid rows of some files, merged in timestamp order, ready to send."""

    timestamps: np.ndarray  # int64, sorted
    values: pa.ChunkedArray  # large_binary: the JSON messages
    keys: pa.ChunkedArray  # large_binary: user_id, UTF-8
    files: int = 0
    skipped: int = 0
    skipped_examples: list[tuple[str, int, str]] = field(default_factory=list)
    skipped_reasons: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.timestamps.size)


@dataclass
class FileEvents:
    """One file's valid rows (in file order) and its rejected rows."""

    name: str
    timestamps: np.ndarray
    values: pa.Array
    keys: pa.Array
    skipped: Counter[str]
    examples: list[tuple[int, str]]  # the first MAX_EXAMPLES (line, reason), by line


# --------------------------------------------------------------------------- reading
def find_csv_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, directories as their ``*.csv`` files in name order; no duplicates."""
    found: list[Path] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            candidates = sorted(p for p in path.glob("*.csv") if p.is_file())
        elif path.is_file():
            candidates = [path]
        elif path.exists():
            raise InputError(f"{path}: not a file or directory")
        else:
            raise InputError(f"{path}: no such file or directory")
        for candidate in candidates:
            resolved = candidate.resolve()
            if resolved not in seen:
                seen.add(resolved)
                found.append(candidate)
    if not found:
        raise InputError("no CSV files found in " + ", ".join(str(p) for p in paths))
    return found


def _header(raw: bytes) -> list[str]:
    first = raw.split(b"\n", 1)[0].decode("utf-8-sig", errors="replace").rstrip("\r")
    return next(csv.reader([first]), [])


def _record_lines(raw: bytes) -> np.ndarray:
    """1-based physical line number of each CSV record (header included): Arrow skips empty
    lines and counts records, not lines."""
    buf = np.frombuffer(raw, dtype=np.uint8)
    newlines = np.flatnonzero(buf == 10)
    starts = np.concatenate(([0], newlines + 1))
    ends = np.concatenate((newlines, [buf.size]))
    lengths = ends - starts
    cr = (lengths > 0) & (buf[np.maximum(ends - 1, 0)] == 13) if buf.size else lengths > 0
    return np.flatnonzero(lengths - cr > 0) + 1


def read_file(path: str | Path) -> FileEvents:
    """Read, validate and format one CSV file (all columns as strings, empty stays "")."""
    path = Path(path)
    name = path.name
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}") from exc
    names = _header(raw)
    bad_records: list[int] = []

    def on_invalid(row: Any) -> str:
        bad_records.append(row.number if row.number is not None else -1)
        return "skip"

    if raw.strip(b"\r\n\t \xef\xbb\xbf"):
        try:
            table = pv.read_csv(
                pa.BufferReader(raw),
                read_options=pv.ReadOptions(use_threads=False),  # serial: row numbers known
                parse_options=pv.ParseOptions(invalid_row_handler=on_invalid),
                convert_options=pv.ConvertOptions(
                    column_types={n: pa.string() for n in names},
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                ),
            )
        except (pa.ArrowInvalid, UnicodeError) as exc:
            raise InputError(f"{path}: cannot read CSV: {exc}") from exc
    else:  # an empty file: no header, no rows
        table = pa.table({})
    columns = {n: table.column(n).combine_chunks() for n in table.column_names if n in FIELDS}
    n_rows = table.num_rows

    # Physical line of every parsed row: records 2.. minus the invalid ones, mapped to lines.
    record_lines = _record_lines(raw)
    n_records = 1 + n_rows + len(bad_records)
    exact = record_lines.size == n_records  # no quoted newlines: records are lines
    records = np.arange(2, n_records + 1)
    bad = np.asarray(bad_records, dtype=np.int64)
    row_records = records[~np.isin(records, bad)] if bad.size else records
    if row_records.size != n_rows:  # unknown numbers (never with serial reads): best effort
        row_records = np.arange(2, n_rows + 2)
    row_lines = record_lines[row_records - 1] if exact else row_records
    bad_lines = [int(record_lines[b - 1]) if exact and b > 0 else b for b in bad_records]

    skipped: Counter[str] = Counter()
    examples: list[tuple[int, str]] = [(line, WRONG_FIELDS) for line in bad_lines[:MAX_EXAMPLES]]
    if bad_records:
        skipped[WRONG_FIELDS] += len(bad_records)

    has_all = all(n in columns for n in CSV_FIELDS)
    require_id = True
    if EVENT_ID not in columns and n_rows:
        if has_all:
            columns[EVENT_ID] = pa.array(_derived_ids(name, columns), pa.string())
        else:
            require_id = False  # report the missing data column, not the missing id

    # Fast path: plainly valid rows, validated and formatted with Arrow kernels.
    fast = np.zeros(n_rows, dtype=bool)
    if n_rows and has_all and EVENT_ID in columns:
        mask = pc.and_(
            pc.match_substring_regex(columns["timestamp"], _DIGITS),
            pc.is_in(columns["event_type"], value_set=pa.array(["0", "1"])),
        )
        for n in (EVENT_ID, *ID_FIELDS):
            mask = pc.and_(mask, pc.match_substring_regex(columns[n], _PLAIN_ID))
        fast = mask.to_numpy(zero_copy_only=False)
        idx = np.flatnonzero(fast)
        ts = pc.cast(columns["timestamp"].take(idx), pa.int64()).to_numpy()
        in_range = (ts >= MIN_TIMESTAMP) & (ts < MAX_TIMESTAMP)
        fast[idx[~in_range]] = False  # out of range: the slow path says why
    fast_idx = np.flatnonzero(fast)
    fast_ts, fast_values, fast_keys = _format_plain(columns, fast_idx)

    # Slow path: everything else, one row at a time with the contract's own functions.
    slow_idx: list[int] = []
    slow_ts: list[int] = []
    slow_values: list[bytes] = []
    slow_keys: list[bytes] = []
    rest = np.flatnonzero(~fast)
    if rest.size:
        present = {n: col.take(rest).to_pylist() for n, col in columns.items()}
        for j, i in enumerate(rest.tolist()):
            record = {n: values[j] for n, values in present.items()}
            reason = rejection_reason_py(record, require_event_id=require_id)
            if reason is not None:
                skipped[reason] += 1
                if len(examples) < 2 * MAX_EXAMPLES:
                    examples.append((int(row_lines[i]), reason))
                continue
            slow_idx.append(i)
            slow_ts.append(int(str(record["timestamp"]).strip()))
            slow_values.append(
                json.dumps(to_json_record(record), separators=(",", ":")).encode()
            )
            slow_keys.append(str(record["user_id"]).encode())

    # Back to file order.
    order = np.argsort(np.concatenate((fast_idx, np.asarray(slow_idx, np.int64))), kind="stable")
    timestamps = np.concatenate((fast_ts, np.asarray(slow_ts, np.int64)))[order]
    values = pa.concat_arrays([fast_values, pa.array(slow_values, pa.large_binary())]).take(order)
    keys = pa.concat_arrays([fast_keys, pa.array(slow_keys, pa.large_binary())]).take(order)
    return FileEvents(name, timestamps, values, keys, skipped, sorted(examples)[:MAX_EXAMPLES])


def _derived_ids(file_name: str, columns: Mapping[str, pa.Array]) -> list[str]:
    """:func:`derived_event_id_py` for every row; occurrence counts identical earlier rows."""
    seen: dict[tuple[str, ...], int] = {}
    ids: list[str] = []
    for row in zip(*(columns[n].to_pylist() for n in CSV_FIELDS), strict=True):
        occurrence = seen.get(row, 0)
        seen[row] = occurrence + 1
        ids.append(derived_event_id_py(file_name, dict(zip(CSV_FIELDS, row, strict=True)),
                                       occurrence))
    return ids


def _format_plain(
    columns: Mapping[str, pa.Array], idx: np.ndarray
) -> tuple[np.ndarray, pa.Array, pa.Array]:
    """Timestamps, JSON values and keys of plainly valid rows, built with Arrow kernels: the
    same bytes as ``json.dumps(to_json_record(row), separators=(",", ":"))``."""
    if idx.size == 0:
        empty = pa.array([], pa.large_binary())
        return np.zeros(0, np.int64), empty, empty
    col = {n: columns[n].take(idx) for n in FIELDS}
    ts = pc.cast(col["timestamp"], pa.int64())
    parts: list[Any] = ['{"event_id":"', col[EVENT_ID], '","timestamp":', pc.cast(ts, pa.string()),
                        ',"event_type":', col["event_type"]]
    for n in ID_FIELDS:
        parts += [f',"{n}":"', col[n], '"']
    parts.append("}")
    values = pc.binary_join_element_wise(*parts, "")
    return (
        ts.to_numpy(),
        values.cast(pa.large_binary()),
        col["user_id"].cast(pa.large_binary()),
    )


def load_events(paths: Iterable[str | Path]) -> Events:
    """Read and validate every CSV file under ``paths``; merge the valid rows by timestamp."""
    files = find_csv_files(paths)
    parts = [read_file(p) for p in files]
    reasons: Counter[str] = Counter()
    examples: list[tuple[str, int, str]] = []
    for part in parts:
        reasons.update(part.skipped)
        examples += [(part.name, line, why) for line, why in part.examples]
    timestamps = np.concatenate([p.timestamps for p in parts])
    order = np.argsort(timestamps, kind="stable")  # stable: ties keep file, then row order
    values = pa.chunked_array([p.values for p in parts], pa.large_binary()).take(order)
    keys = pa.chunked_array([p.keys for p in parts], pa.large_binary()).take(order)
    return Events(
        timestamps=timestamps[order], values=values, keys=keys, files=len(files),
        skipped=sum(reasons.values()), skipped_examples=examples[:MAX_EXAMPLES],
        skipped_reasons=dict(reasons.most_common()),
    )


# --------------------------------------------------------------------------- sending
class _Progress:
    """A one-line text progress bar on stderr, redrawn at most every 0.5 s."""

    def __init__(self, total: int, enabled: bool, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.total = total
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self.every = PROGRESS_EVERY if self.tty else PROGRESS_EVERY_LOG
        self.start = time.monotonic()
        self.last = self.start
        self.drawn = False

    def update(self, sent: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < self.every):
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        pct = 100.0 * sent / self.total if self.total else 100.0
        filled = int(pct / 5)
        line = (f"[{'#' * filled}{'.' * (20 - filled)}] {sent:,}/{self.total:,} "
                f"{pct:5.1f}%  {sent / elapsed:,.0f} events/s")
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()


class _Acks:
    """Futures of the records handed to the producer. Completed ones are consumed from the
    front (in hand-over order); a periodic scan finds a failure anywhere."""

    def __init__(self) -> None:
        self.pending: deque[Any] = deque()
        self.acked = 0
        self.error: BaseException | None = None
        self.last_change = time.monotonic()
        self.last_scan = self.last_change

    def drain(self) -> None:
        pending = self.pending
        before = len(pending)
        while pending and pending[0].is_done:
            future = pending.popleft()
            if future.exception is None:
                self.acked += 1
            elif self.error is None:
                self.error = future.exception
        now = time.monotonic()
        if len(pending) != before:
            self.last_change = now
        if self.error is None and now - self.last_scan >= 0.5:
            self.last_scan = now
            for future in pending:
                if future.is_done and future.exception is not None:
                    self.error = future.exception
                    break

    def settle(self) -> None:
        """Count every acknowledged record, wherever it is (call after the producer closed)."""
        self.drain()
        self.acked += sum(1 for future in self.pending if future.succeeded())
        self.pending.clear()


def _partitions_of(keys: pa.ChunkedArray, partitions: Sequence[int]) -> np.ndarray:
    """Kafka's default (murmur2) partition of every key, computed once per distinct key."""
    from kafka.partitioner.default import murmur2

    ordered = sorted(partitions)
    if len(keys) == 0:
        return np.zeros(0, np.int64)
    encoded = pc.dictionary_encode(keys).combine_chunks()
    table = np.array(
        [ordered[(murmur2(k) & 0x7FFFFFFF) % len(ordered)] for k in encoded.dictionary.to_pylist()],
        dtype=np.int64,
    )
    return table[encoded.indices.to_numpy(zero_copy_only=False)]


def _check_positive(name: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def produce(
    paths: Iterable[str | Path],
    *,
    topic: str | None = None,
    rate: float | None = None,
    speedup: float | None = None,
    bootstrap: str | None = None,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    dry_run: bool = False,
    producer_config: Mapping[str, Any] | None = None,
) -> ProduceReport:
    """Send the valid rows of the CSV files under ``paths`` to Kafka in timestamp order.

    Raises :class:`InputError` for unusable input (nothing sent), :class:`ProduceError` when
    Kafka is unreachable or does not acknowledge events within ``timeout`` seconds (its
    ``report.sent`` counts the acknowledged ones) and ``ValueError`` for bad arguments.
    """
    _check_positive("rate", rate)
    _check_positive("speedup", speedup)
    _check_positive("timeout", timeout)
    began = time.monotonic()
    events = load_events(paths)
    report = ProduceReport(
        skipped=events.skipped, skipped_examples=events.skipped_examples, total=len(events),
        files=events.files, skipped_reasons=events.skipped_reasons,
    )
    if dry_run:
        report.seconds = time.monotonic() - began
        return report

    if topic is None or bootstrap is None:
        from adstats.config import settings

        cfg = settings()
        topic = topic or cfg.topic
        bootstrap = bootstrap or cfg.kafka_bootstrap
    report.topic = topic
    try:
        producer = _open_producer(bootstrap, topic, timeout, producer_config)
    except _Unavailable as exc:
        raise ProduceError(f"{exc}; nothing was sent", report) from exc.__cause__
    try:
        partitions = producer.partitions_for(topic)
        part_of = _partitions_of(events.keys, partitions)
    except BaseException:
        _shutdown(producer, 1.0)
        raise
    _send_all(producer, topic, events, part_of, report, rate, speedup, timeout, progress,
              bootstrap, began)  # closes the producer
    return report


def _open_producer(
    bootstrap: str, topic: str, timeout: float, extra: Mapping[str, Any] | None
) -> Any:
    from kafka import KafkaAdminClient, KafkaProducer
    from kafka.errors import KafkaError

    extra = dict(extra or {})
    linger = int(extra.get("linger_ms", PRODUCER_CONFIG["linger_ms"]))
    delivery_ms = int(timeout * 1000)
    request_ms = max(500, min(30_000, delivery_ms - linger))
    connect_ms = int(min(timeout, 5) * 1000)  # an unreachable broker fails fast
    connect = {"bootstrap_timeout_ms": connect_ms}  # kafka-python 3; older ones lack it
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap, client_id="adstats-produce", request_timeout_ms=request_ms,
            **{k: v for k, v in connect.items() if k in KafkaAdminClient.DEFAULT_CONFIG},
        )
    except KafkaError as exc:
        raise _Unavailable(f"cannot reach Kafka at {bootstrap} within {connect_ms / 1000:g} s "
                           f"({_describe(exc)})") from exc
    try:
        topics = set(admin.list_topics())
        settle = time.monotonic() + min(timeout, 3)  # a topic created just now may lag
        while topic not in topics and time.monotonic() < settle:
            time.sleep(0.2)
            topics = set(admin.list_topics())
    except KafkaError as exc:
        raise _Unavailable(f"cannot list the topics of {bootstrap} ({_describe(exc)})") from exc
    finally:
        admin.close()
    if topic not in topics:
        raise _Unavailable(f"topic {topic!r} does not exist on {bootstrap} (`adstats stack up` "
                           "creates the pipeline's topics)")
    config = dict(PRODUCER_CONFIG)
    config.update(
        delivery_timeout_ms=max(delivery_ms, request_ms + linger),
        request_timeout_ms=request_ms,
        max_block_ms=delivery_ms,
        client_id="adstats-produce",
        **{k: v for k, v in connect.items() if k in KafkaProducer.DEFAULT_CONFIG},
    )
    config.update(extra)
    try:
        return KafkaProducer(bootstrap_servers=bootstrap, **config)
    except KafkaError as exc:
        raise _Unavailable(f"cannot reach Kafka at {bootstrap} ({_describe(exc)})") from exc


def _describe(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}" if text else name


def _shutdown(producer: Any, grace: float) -> None:
    """Close the producer; records not acknowledged within ``grace`` seconds are abandoned
    (their futures fail) so that nothing is sent after this returns."""
    from kafka.errors import KafkaError

    try:
        producer.close(timeout=grace)
        return
    except KafkaError:  # close() raises if a batch is still incomplete after grace
        pass
    sender = getattr(producer, "_sender", None)  # kafka-python has no public force close
    if sender is not None:
        sender.force_close()
        sender.join(5)
    try:
        producer.close(timeout=0)
    except KafkaError:
        pass


def _send_all(
    producer: Any, topic: str, events: Events, part_of: np.ndarray, report: ProduceReport,
    rate: float | None, speedup: float | None, timeout: float, progress: bool,
    bootstrap: str, began: float,
) -> None:
    from kafka.errors import KafkaTimeoutError

    n = len(events)
    acks = _Acks()
    bar = _Progress(n, progress)
    send = producer.send
    stall_limit = timeout + 30  # every future resolves by the delivery timeout; a safety net
    ts = events.timestamps
    start = time.monotonic()
    t0 = int(ts[0]) if n else 0
    capacity = max(1.0, rate * 0.1) if rate else 0.0
    tokens = capacity
    refilled = start
    handed = 0  # records handed to the producer
    interrupted = False
    try:
        while handed < n and acks.error is None:
            now = time.monotonic()
            target = n
            if rate:
                tokens = min(capacity, tokens + (now - refilled) * rate)
                refilled = now
                target = min(target, handed + int(tokens))
            if speedup:
                due = np.searchsorted(ts, t0 + (now - start) * speedup, side="right")
                target = min(target, int(due))
            if target <= handed:  # wait for the next token or the next due event
                waits = [0.05]
                if rate:
                    waits.append((1.0 - tokens) / rate)
                if speedup:
                    waits.append(start + (int(ts[handed]) - t0) / speedup - now)
                time.sleep(min(max(min(waits), 0.001), 0.05))
                acks.drain()
                bar.update(acks.acked)
                continue
            hi = min(target, handed + CHUNK)
            values = events.values.slice(handed, hi - handed).to_pylist()
            keys = events.keys.slice(handed, hi - handed).to_pylist()
            parts = part_of[handed:hi].tolist()
            try:
                acks.pending.extend([
                    send(topic, value=v, key=k, partition=p)
                    for v, k, p in zip(values, keys, parts, strict=True)
                ])
            except Exception as exc:  # send() itself failed (metadata timeout, closed...)
                acks.error = exc
                break
            if rate:
                tokens -= hi - handed
            handed = hi
            acks.drain()
            while len(acks.pending) > MAX_PENDING and acks.error is None:
                if time.monotonic() - acks.last_change > stall_limit:
                    break
                time.sleep(0.005)
                acks.drain()
                bar.update(acks.acked)
            bar.update(acks.acked)
        # Wait for the acknowledgements of everything handed over (bounded by the timeout).
        while acks.pending and acks.error is None:
            if time.monotonic() - acks.last_change > stall_limit:
                break
            try:
                producer.flush(timeout=0.5)
            except KafkaTimeoutError:
                pass
            acks.drain()
            bar.update(acks.acked)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        # After a failure Kafka has been unreachable for the whole timeout: stop at once.
        _shutdown(producer, 1.0 if interrupted or acks.error is not None else 5.0)
        acks.settle()
        bar.update(acks.acked, force=True)
        bar.close()
        report.sent = acks.acked
        report.seconds = time.monotonic() - began
        report.events_per_s = acks.acked / max(time.monotonic() - start, 1e-9)

    if interrupted or acks.error is not None or acks.acked != n:
        not_sent = n - acks.acked
        unconfirmed = handed - acks.acked
        if interrupted:
            why = "interrupted"
        elif acks.error is not None:
            why = (f"Kafka at {bootstrap} did not acknowledge events within {timeout:g} s "
                   f"({_describe(acks.error)})")
        else:
            why = f"Kafka at {bootstrap} stopped acknowledging events"
        raise ProduceError(
            f"{why}. {acks.acked:,} of {n:,} events were confirmed sent (acknowledged by "
            f"Kafka); the other {not_sent:,} were NOT sent: {unconfirmed:,} were handed to "
            f"the producer and abandoned unacknowledged (a few in flight may still have been "
            f"written), {n - handed:,} were never handed over. A re-run sends everything "
            "again; consumers deduplicate by event_id.",
            report, exit_code=130 if interrupted else 1,
        )


# --------------------------------------------------------------------------- command line
def positive_float(text: str) -> float:
    """argparse ``type=``: a finite number > 0."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``adstats produce`` command-line parser."""
    parser = argparse.ArgumentParser(
        prog="adstats produce",
        description="Replay ad-event CSV files into Kafka in timestamp order (invalid rows are "
                    "reported and skipped).",
    )
    add = parser.add_argument
    add("paths", nargs="+", metavar="FILE|DIR",
        help="CSV files, or directories whose *.csv files are all sent")
    add("--rate", type=positive_float, default=None, metavar="EVENTS_PER_S",
        help="send at most this many events per second (default: as fast as possible)")
    add("--speedup", type=positive_float, default=None, metavar="X",
        help="replay in scaled real time: X seconds of event time per wall-clock second "
             "(with --rate: the schedule, capped at the rate)")
    add("--topic", default=None, metavar="T", help="Kafka topic (default: ADSTATS_TOPIC)")
    add("--bootstrap", default=None, metavar="HOST:PORT",
        help="Kafka bootstrap servers (default: ADSTATS_KAFKA_BOOTSTRAP)")
    add("--timeout", type=positive_float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
        help="give up when Kafka does not acknowledge an event for this long (default: "
             f"{DEFAULT_TIMEOUT:g})")
    add("--dry-run", action="store_true", help="read and validate only; send nothing")
    add("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


def _print_skipped(report: ProduceReport, stream: TextIO) -> None:
    if not report.skipped:
        return
    reasons = ", ".join(f"{why}: {count:,}" for why, count in report.skipped_reasons.items())
    print(f"skipped {report.skipped:,} invalid rows ({reasons}); first ones:", file=stream)
    for name, line, why in report.skipped_examples:
        print(f"  {name}:{line}: {why}", file=stream)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        report = produce(
            args.paths, topic=args.topic, rate=args.rate, speedup=args.speedup,
            bootstrap=args.bootstrap, progress=not args.quiet, timeout=args.timeout,
            dry_run=args.dry_run,
        )
    except InputError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; nothing was sent", file=sys.stderr)
        return 130
    except ProduceError as exc:
        _print_skipped(exc.report, sys.stderr)
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    _print_skipped(report, sys.stderr)
    if args.dry_run:
        print(f"dry run: {report.total:,} valid events in {report.files} files, "
              f"{report.skipped:,} skipped, {report.seconds:.2f} s")
    else:
        print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
