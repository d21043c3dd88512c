"""`adstats demo` end to end in a reduced size (same code path, smaller data), its printed
merged totals checked against DuckDB computing the same day from the generated files."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from datetime import UTC, datetime

from tests.oracle import oracle_stats


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_demo_prints_merged_totals_equal_to_an_independent_computation(stack, tmp_path):
    env = {**os.environ, "ADSTATS_DEMO_DIR": str(tmp_path / "demo")}
    demo = subprocess.run(
        [sys.executable, "-m", "adstats.cli", "demo", "--events-per-hour", "300",
         "--port", str(_free_port()), "--print-totals"],
        env=env, capture_output=True, text=True, timeout=900,
    )
    try:
        assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
        totals = {}
        for line in demo.stdout.splitlines():
            if line.startswith("DEMO-TOTAL "):
                _, tag, dim, body = line.split(" ", 3)
                totals[(tag, dim)] = json.loads(body)
        assert set(totals) == {(t, d) for t in ("before", "after")
                               for d in ("placement", "page")}

        files = sorted((tmp_path / "demo" / "data" / "sample_data").glob("*.csv"))
        assert len(files) == 24
        day = int(datetime(2026, 1, 15, tzinfo=UTC).timestamp())
        exact = oracle_stats(files)
        for (tag, dim), got in totals.items():
            want = {i: v for (d, i, g, p), v in exact.items()
                    if d == dim and g == "day" and p == day}
            assert {i: row[:2] for i, row in got["by_id"].items()} == {
                i: [v[0], v[1]] for i, v in want.items()}
            if tag == "before":  # 20 exact hours + 4 streamed ones: counts exact, users bounded
                assert got["sources"] == ["mixed"]
                assert all(low <= want[i][2] <= high
                           for i, (_, _, _, low, high) in got["by_id"].items())
            else:  # the batch layer caught up: the exact daily rows
                assert got["sources"] == ["batch"]
                assert {i: row[2] for i, row in got["by_id"].items()} == {
                    i: v[2] for i, v in want.items()}
        for step in ("[1/9]", "[4/9]", "[8/9]", "[9/9]"):
            assert step in demo.stdout
        # The last hours show both kinds of row, and the reconciliation is measured: every
        # streamed event was counted by the speed layer (no late events in the demo data).
        assert "  speed   false" in demo.stdout and "  batch   true" in demo.stdout
        recon = [json.loads(line.split(" ", 1)[1]) for line in demo.stdout.splitlines()
                 if line.startswith("DEMO-RECONCILIATION ")]
        assert recon and recon[0]["hours"] == 4 and recon[0]["count_diffs"] == 0, recon
    finally:
        subprocess.run([sys.executable, "-c", "from adstats.demo import stop_children; "
                        "from pathlib import Path; import sys; stop_children(Path(sys.argv[1]))",
                        str(tmp_path / "demo")], env=env, timeout=180)
