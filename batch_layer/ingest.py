"""``adstats ingest PATH…``: landing CSV files -> the immutable master dataset.

    read CSV (explicit all-string schema) -> validate (adstats.events) -> staging Parquet
      -> bad rows: quarantine/<run_id>/ (JSON, with the reason)
      -> good rows: typed, placed by their own timestamp, deduplicated by event_id (within the
         input and against the master dataset) -> master/files/date=…/hour=…/ (append)
    -> manifest line per file (name, sha256, counts)

Idempotent: a file whose (name, sha256) is in the manifest is skipped, and events whose id is
already in the master dataset are not written again (so a crash between writing and recording
the manifest is repaired by simply ingesting again).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from adstats.config import Settings, settings
from adstats.events import CSV_FIELDS, EVENT_ID, FIELDS, derived_event_id, rejection_reason
from batch_layer.master import master_lock, partition_columns, read_source, source_root

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

CORRUPT = "_corrupt_record"


@dataclass
class IngestReport:
    run_id: str
    files_new: int = 0
    files_skipped: list[str] = field(default_factory=list)
    files_rejected: dict[str, str] = field(default_factory=dict)
    rows_read: int = 0
    rows_valid: int = 0
    duplicates_in_input: int = 0
    already_in_master: int = 0
    rows_written: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    quarantine_dir: str | None = None
    hours: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [
            f"ingest run {self.run_id}: {self.files_new} new file(s), "
            f"{len(self.files_skipped)} already ingested, {len(self.files_rejected)} rejected",
            f"  rows read {self.rows_read:,}, valid {self.rows_valid:,}, "
            f"duplicates in input {self.duplicates_in_input:,}, "
            f"already in master {self.already_in_master:,}, written {self.rows_written:,}",
            f"  quarantined {sum(self.quarantined.values()):,}"
            + (f" -> {self.quarantine_dir}" if self.quarantine_dir else ""),
        ]
        lines += [f"    {n:>8,}  {reason}" for reason, n in sorted(self.quarantined.items())]
        lines += [f"  rejected file {name}: {why}" for name, why in self.files_rejected.items()]
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in self.stage_seconds.items())
        lines.append(f"  {len(self.hours)} hour(s) touched, {self.seconds:.1f} s"
                     + (f" ({stages})" if stages else ""))
        return "\n".join(lines)


def landing_files(paths: Iterable[str | Path]) -> list[Path]:
    """CSV files named directly or found (``*.csv``) in the given folders, sorted."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser().absolute()
        if path.is_dir():
            found += sorted(path.glob("*.csv"))
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return sorted(set(found))


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_path(cfg: Settings) -> Path:
    return cfg.master_dir / "_manifest" / "ingested.jsonl"


def load_manifest(cfg: Settings) -> dict[tuple[str, str], dict]:
    path = manifest_path(cfg)
    if not path.exists():
        return {}
    entries = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {(e["file"], e["sha256"]): e for e in entries}


def read_header(path: Path) -> list[str] | str:
    """The file's column names, or the reason the header is unusable."""
    with path.open("r", encoding="utf-8-sig", errors="replace") as fh:
        first = fh.readline().strip()
    if not first:
        return "empty file (no header)"
    columns = [c.strip() for c in first.split(",")]
    missing = [c for c in CSV_FIELDS if c not in columns]
    if missing:
        return f"header lacks {', '.join(missing)} (header: {first[:120]})"
    if len(set(columns)) != len(columns):
        return f"header repeats a column (header: {first[:120]})"
    return columns


def read_landing(spark: SparkSession, files: list[Path], columns: list[str]) -> DataFrame:
    """CSV files sharing one header -> raw string columns, ``_file``, ``_reason``, ``event_id``."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType, StructField, StructType

    schema = StructType([StructField(c, StringType()) for c in [*columns, CORRUPT]])
    raw = (
        spark.read.schema(schema)
        .option("header", True)
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", CORRUPT)
        .csv([str(f) for f in files])
        # The name makes derived event ids (the same as `adstats produce` gives); the full
        # path keys the per-file counts, as two folders may hold files of the same name.
        .withColumn("_file", F.col("_metadata.file_name"))
        .withColumn("_path", F.col("_metadata.file_path"))
    )
    # Spark reads an empty field as null; rows with absent fields are already caught as
    # corrupt, so a null here is an empty value and is validated as "".
    cols = {c: F.coalesce(F.col(c), F.lit("")) for c in columns}
    has_event_id = EVENT_ID in columns
    reason = F.when(F.col(CORRUPT).isNotNull(), F.lit("wrong number of fields")).otherwise(
        rejection_reason(cols, require_event_id=has_event_id)
    )
    raw = raw.withColumn("_reason", reason)
    if not has_event_id:
        # Identical rows of one file are distinct events: number them to tell them apart.
        occurrence = F.row_number().over(
            Window.partitionBy("_file", *CSV_FIELDS).orderBy("timestamp")
        ) - 1
        raw = raw.withColumn(EVENT_ID, derived_event_id(F.col("_file"), cols, occurrence))
    return raw.select(*FIELDS, CORRUPT, "_file", "_path", "_reason")


def typed_valid_events(staged: DataFrame, keep: Iterable[str] = ()) -> DataFrame:
    """Rows that passed validation, typed and with their (date, hour) partition."""
    from pyspark.sql import functions as F

    from adstats.events import typed_event_columns

    typed = staged.where(F.col("_reason").isNull()).select(
        *typed_event_columns({c: F.col(c) for c in FIELDS}), *keep
    )
    return typed.select("*", *partition_columns())


def repeated_rows(valid: DataFrame) -> DataFrame:
    """``_row`` of every valid row whose ``event_id`` an earlier row (lower ``_row``) already
    has: those are dropped, one row per event is kept. Only (event_id, _row) is shuffled,
    not whole rows (measured 15-20 % faster than dropDuplicates on the full rows)."""
    from pyspark.sql import functions as F

    keys = valid.select(EVENT_ID, "_row")
    first = keys.groupBy(EVENT_ID).agg(
        F.min("_row").alias("_first"), F.count(F.lit(1)).alias("_n")
    ).where(F.col("_n") > 1)
    return keys.join(first, EVENT_ID).where(F.col("_row") != F.col("_first")).select("_row")


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def ingest(
    paths: Iterable[str | Path],
    spark: SparkSession | None = None,
    cfg: Settings | None = None,
    quiet: bool = False,
) -> IngestReport:
    """Load landing CSV files into the master dataset; see the module docstring."""
    cfg = cfg or settings()
    with master_lock(cfg.master_dir):
        return _ingest(paths, spark, cfg, quiet)


def _ingest(
    paths: Iterable[str | Path], spark: SparkSession | None, cfg: Settings, quiet: bool
) -> IngestReport:
    from pyspark.sql import functions as F

    began = time.monotonic()
    run_id = f"ingest-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    report = IngestReport(run_id=run_id)
    files = landing_files(paths)
    if not files:
        raise FileNotFoundError("no CSV files found in the given paths")

    manifest = load_manifest(cfg)
    groups: dict[tuple[str, ...], list[Path]] = {}
    digests: dict[Path, str] = {}
    for path in files:
        digests[path] = file_digest(path)
        if (path.name, digests[path]) in manifest:
            report.files_skipped.append(path.name)
            continue
        header = read_header(path)
        if isinstance(header, str):
            report.files_rejected[path.name] = header
            continue
        groups.setdefault(tuple(header), []).append(path)
    report.files_new = sum(len(g) for g in groups.values())
    _say(f"ingest {run_id}: {len(files)} file(s), {report.files_new} new, "
         f"{len(report.files_skipped)} already ingested", quiet)
    quarantine = cfg.quarantine_dir / run_id
    _quarantine_rejected_files(report, files, quarantine)
    planned = _stage(report, "hash+plan", began)
    if not groups:
        report.seconds = time.monotonic() - began
        return report

    from adstats.spark import spark_session

    spark = spark or spark_session("adstats-ingest", cfg)
    staging = cfg.master_dir / "_staging" / run_id
    try:
        # 1. One pass over the CSV text: every row, good or bad, into staging Parquet, each
        #    with a row number so duplicates can be told apart without moving whole rows.
        for index, (columns, group) in enumerate(groups.items()):
            _say(f"  reading {len(group)} file(s) with columns {','.join(columns)}", quiet)
            status = F.when(F.col("_reason").isNull(), "valid").otherwise("rejected")
            # Row numbers are unique within one read; the group index in the top bits keeps
            # them unique across header groups.
            (read_landing(spark, group, list(columns))
             .withColumn("_row", F.monotonically_increasing_id() + F.lit(index << 56))
             .withColumn("_status", status)
             .write.mode("append").option("compression", "lz4")  # transient: favour speed
             .partitionBy("_status").parquet(str(staging / "all")))
        mark = _stage(report, "read+validate+stage", planned)
        staged = spark.read.parquet(str(staging / "all"))
        good = staged.where(F.col("_status") == "valid")
        bad = staged.where(F.col("_status") == "rejected")

        # 2. Counts per file and event hour (reads two narrow columns of the staging files).
        per_file: dict[tuple[str, bool], int] = {}
        hours: set[tuple[str, int]] = set()
        for r in typed_valid_events(good, keep=("_path",)).groupBy("_path", "date", "hour") \
                .count().collect():
            key = (local_path(r["_path"]), True)
            per_file[key] = per_file.get(key, 0) + r["count"]
            hours.add((r["date"], r["hour"]))
        for r in bad.groupBy("_path", "_reason").count().collect():
            key = (local_path(r["_path"]), False)
            per_file[key] = per_file.get(key, 0) + r["count"]
            report.quarantined[r["_reason"]] = report.quarantined.get(r["_reason"], 0) \
                + r["count"]

        mark = _stage(report, "count", mark)

        # 3. Bad rows: quarantine with their reason.
        if report.quarantined:
            bad.drop("_status", "_row").coalesce(1).write.mode("overwrite") \
                .option("ignoreNullFields", False).json(str(quarantine / "rows"))
            report.quarantine_dir = str(quarantine)

        mark = _stage(report, "quarantine", mark)

        # 4. Good rows: deduplicated, typed, written by event hour next to the master dataset.
        existing = read_source(spark, cfg.master_dir, "files", [
            datetime.strptime(f"{d} {h}", "%Y-%m-%d %H").replace(tzinfo=UTC)
            for d, h in sorted(hours)
        ])
        _say(f"  {len(hours)} event hour(s); deduplicating"
             + (" against the master dataset" if existing is not None else ""), quiet)
        repeats = repeated_rows(good).persist()
        report.duplicates_in_input = repeats.count()
        unique = typed_valid_events(good.join(repeats, "_row", "left_anti"))
        if existing is not None:
            unique = unique.join(existing.select(EVENT_ID), EVENT_ID, "left_anti")
        unique.write.partitionBy("date", "hour").parquet(str(staging / "new"))
        repeats.unpersist()
        if any((staging / "new").glob("date=*/hour=*/*.parquet")):
            written = spark.read.parquet(str(staging / "new"))
            report.hours = {f"{r['date']}T{r['hour']:02d}": r["count"]
                            for r in written.groupBy("date", "hour").count().collect()}

        mark = _stage(report, "dedup+write", mark)

        # 5. Publish: move the new files into the master dataset, then record the manifest.
        _publish(staging / "new", source_root(cfg.master_dir, "files"))
        _record_manifest(cfg, run_id, groups, digests, per_file)
        _stage(report, "publish", mark)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    report.rows_valid = sum(n for (_, ok), n in per_file.items() if ok)
    report.rows_read = report.rows_valid + sum(n for (_, ok), n in per_file.items() if not ok)
    report.rows_written = sum(report.hours.values())
    report.already_in_master = report.rows_valid - report.duplicates_in_input \
        - report.rows_written
    report.seconds = time.monotonic() - began
    return report


def _stage(report: IngestReport, name: str, since: float) -> float:
    now = time.monotonic()
    report.stage_seconds[name] = round(now - since, 2)
    return now


def _publish(new_root: Path, master_files: Path) -> None:
    """Rename each new Parquet file into its hour folder (same filesystem: atomic per file)."""
    for part in sorted(new_root.glob("date=*/hour=*/*.parquet")):
        target = master_files / part.parent.parent.name / part.parent.name
        target.mkdir(parents=True, exist_ok=True)
        part.rename(target / part.name)


def local_path(uri: str) -> str:
    """Spark's ``_metadata.file_path`` (``file:/a/b%20c.csv``) -> ``/a/b c.csv``."""
    from urllib.parse import unquote, urlparse

    return os.path.abspath(unquote(urlparse(uri).path))


def _record_manifest(
    cfg: Settings, run_id: str, groups: dict, digests: dict[Path, str], per_file: dict
) -> None:
    path = manifest_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    with path.open("a") as fh:
        for group in groups.values():
            for f in group:
                key = os.path.abspath(f)
                entry = {
                    "file": f.name, "sha256": digests[f], "path": str(f), "run_id": run_id,
                    "rows": per_file.get((key, True), 0) + per_file.get((key, False), 0),
                    "valid": per_file.get((key, True), 0),
                    "quarantined": per_file.get((key, False), 0),
                    "ingested_at": now,
                }
                fh.write(json.dumps(entry) + "\n")


def _quarantine_rejected_files(report: IngestReport, files: list[Path], quarantine: Path) -> None:
    if not report.files_rejected:
        return
    target = quarantine / "files"
    target.mkdir(parents=True, exist_ok=True)
    by_name = {f.name: f for f in files}
    for name, reason in report.files_rejected.items():
        shutil.copy2(by_name[name], target / name)
        (target / f"{name}.reason").write_text(reason + "\n")
    report.quarantine_dir = str(quarantine)


def report_json(report: IngestReport) -> str:
    return json.dumps(asdict(report), indent=2)

