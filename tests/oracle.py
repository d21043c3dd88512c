"""An independent oracle: DuckDB computes the batch stats straight from the landing CSV files.

Written from the event contract, not from adstats' code: its own validation in SQL, its own
deduplication and aggregation. Tests compare the batch views with it row for row, and
``bench/batch.py`` times it against our Spark job on the same files.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import duckdb

DIMENSIONS = {"placement": "placement_id", "page": "page_id", "banner": "banner_id"}
GRANULARITIES = {"hour": 3600, "day": 86400}
_VALID = """
    timestamp IS NOT NULL AND event_type IS NOT NULL
    AND coalesce(trim(banner_id), '') <> '' AND coalesce(trim(placement_id), '') <> ''
    AND coalesce(trim(page_id), '') <> '' AND coalesce(trim(user_id), '') <> ''
    AND regexp_full_match(trim(timestamp), '-?[0-9]{1,18}')
    AND TRY_CAST(trim(timestamp) AS BIGINT) BETWEEN 946684800 AND 4102444799
    AND trim(event_type) IN ('0', '1')
"""


def load_events(con: duckdb.DuckDBPyConnection, files: list[Path]) -> int:
    """Valid, deduplicated events of all files into table ``events``; returns their count.
    Files with ``event_id`` are deduplicated by it; in files without, every row is an event."""
    groups: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for f in files:
        with open(f) as fh:
            groups[tuple(fh.readline().strip().split(","))].append(str(f))
    parts = []
    for i, (header, paths) in enumerate(groups.items()):
        columns = ", ".join(f"'{c}': 'VARCHAR'" for c in header)
        con.execute(f"""
            CREATE TEMP TABLE raw{i} AS SELECT * FROM read_csv({paths!r}, header=true,
              null_padding=true, ignore_errors=true, filename=true, columns={{{columns}}})""")
        if "event_id" in header:
            ident, extra = "event_id", "AND coalesce(trim(event_id), '') <> ''"
        else:
            ident, extra = "filename || '#' || CAST(row_number() OVER () AS VARCHAR)", ""
        parts.append(f"""SELECT {ident} AS event_id, CAST(trim(timestamp) AS BIGINT) AS ts,
            CAST(trim(event_type) AS INTEGER) AS et, banner_id, placement_id, page_id, user_id
            FROM raw{i} WHERE {_VALID} {extra}""")
    con.execute(f"""CREATE TEMP TABLE events AS
        SELECT * FROM ({' UNION ALL '.join(parts)})
        QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY ts) = 1""")
    return con.execute("SELECT count(*) FROM events").fetchone()[0]


def compute_stats(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str, str, int], tuple]:
    """{(dimension, dim_id, granularity, period_start_epoch): (views, clicks, distinct_users)}"""
    out = {}
    for dim, col in DIMENSIONS.items():
        for gran, secs in GRANULARITIES.items():
            rows = con.execute(f"""
                SELECT {col}, ts - (ts % {secs}) AS p, count(*) FILTER (WHERE et = 0),
                       count(*) FILTER (WHERE et = 1), count(DISTINCT user_id)
                FROM events GROUP BY ALL""").fetchall()
            for dim_id, period, views, clicks, users in rows:
                out[(dim, dim_id, gran, int(period))] = (views, clicks, users)
    return out


def oracle_stats(files: list[Path]) -> dict[tuple[str, str, str, int], tuple[int, int, int]]:
    con = duckdb.connect()
    load_events(con, files)
    return compute_stats(con)


def oracle_event_count(files: list[Path]) -> int:
    return load_events(duckdb.connect(), files)
