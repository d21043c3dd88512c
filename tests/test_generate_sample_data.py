"""Unit tests for utils/generate_sample_data.py (fast: small sizes, no services)."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from utils import generate_sample_data as gsd
from utils.generate_sample_data import CSV_COLUMNS, PLACEMENTS, generate, main

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "utils" / "generate_sample_data.py"
START = "2024-03-10T22"
START_DT = datetime(2024, 3, 10, 22, tzinfo=UTC)
USER_RE = re.compile(r"^[A-Za-z0-9]{10}$")


def run(out: Path, *args: str) -> list[Path]:
    assert main(["--out", str(out), "-q", *args]) == 0
    return sorted(out.glob("*.csv"))


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def hour_of(path: Path) -> int:
    return int(datetime.strptime(path.name, gsd.FILE_NAME_FORMAT).replace(tzinfo=UTC).timestamp())


# --------------------------------------------------------------------------- basics
def test_defaults_match_original_interface():
    args = gsd.build_parser().parse_args([])
    assert (args.n_events, args.n_banners, args.n_pages, args.n_batches, args.n_users) == (
        100000, 10, 20, 10, 20000,
    )
    assert args.out == Path("data/sample_data")
    assert args.seed is None and args.start is None and not args.event_id
    assert args.ctr is None and args.skew == 0
    assert args.late_fraction == args.duplicate_fraction == args.malformed_fraction == 0
    assert PLACEMENTS == tuple(f"placement{i}" for i in range(5))
    assert CSV_COLUMNS == (
        "timestamp", "event_type", "banner_id", "placement_id", "page_id", "user_id",
    )


def test_files_header_counts_and_values(tmp_path: Path):
    files = run(tmp_path / "out", "-e", "3000", "-b", "4", "-p", "6", "-t", "3", "-u", "50",
                "--start", START, "--seed", "1")
    assert [f.name for f in files] == [
        "2024-03-10_22-00-00_sample_data.csv",
        "2024-03-10_23-00-00_sample_data.csv",
        "2024-03-11_00-00-00_sample_data.csv",
    ]
    users: set[str] = set()
    for f in files:
        text = f.read_text()
        assert text.splitlines()[0] == "timestamp,event_type,banner_id,placement_id,page_id,user_id"
        assert '"' not in text and text.endswith("\n")
        header, rows = read_rows(f)
        assert len(rows) == 3000
        h0 = hour_of(f)
        ts = [int(r[0]) for r in rows]
        assert ts == sorted(ts)
        assert all(h0 <= t < h0 + 3600 for t in ts)
        assert {r[1] for r in rows} == {"0", "1"}
        assert {r[2] for r in rows} == {f"banner{i}" for i in range(4)}
        assert {r[3] for r in rows} == set(PLACEMENTS)
        assert {r[4] for r in rows} == {f"page{i}" for i in range(6)}
        assert all(USER_RE.match(r[5]) for r in rows)
        users |= {r[5] for r in rows}
    assert len(users) == 50  # the same 50 ids are shared by all batches


def test_user_ids_distinct():
    import numpy as np

    ids = gsd.make_user_ids(np.random.default_rng(0), 5000)
    assert len(ids) == len(set(ids)) == 5000
    assert all(USER_RE.match(u) for u in ids)


def test_default_start_ends_at_current_hour(tmp_path: Path):
    now = datetime.now(UTC)
    files = run(tmp_path, "-e", "10", "-t", "3", "-u", "5")
    hours = [datetime.fromtimestamp(hour_of(f), UTC) for f in files]
    last = now.replace(minute=0, second=0, microsecond=0)
    if datetime.now(UTC).hour != now.hour:  # ran across an hour boundary
        pytest.skip("hour changed during the test")
    assert hours == [last - timedelta(hours=2), last - timedelta(hours=1), last]
    assert gsd.default_start(3, datetime(2024, 1, 1, 5, 59, tzinfo=UTC)) == datetime(
        2024, 1, 1, 3, tzinfo=UTC
    )


@pytest.mark.parametrize(
    "text", ["2024-03-10T22", "2024-03-10 22:00", "2024-03-10T22:00:00Z", "2024-03-10T23+01:00"]
)
def test_start_forms(text: str):
    assert gsd.utc_hour(text) == START_DT


def test_out_dir_created(tmp_path: Path):
    out = tmp_path / "a" / "b"
    files = run(out, "-e", "5", "-t", "1", "-u", "3", "--start", START)
    assert out.is_dir() and len(files) == 1


# --------------------------------------------------------------------------- seed / ids
def test_seed_reproducible_and_different(tmp_path: Path):
    args = ["-e", "2000", "-t", "2", "-u", "100", "--start", START, "--event-id"]
    a = run(tmp_path / "a", *args, "--seed", "7")
    b = run(tmp_path / "b", *args, "--seed", "7")
    c = run(tmp_path / "c", *args, "--seed", "8")
    assert [f.read_bytes() for f in a] == [f.read_bytes() for f in b]
    assert [f.read_bytes() for f in a] != [f.read_bytes() for f in c]
    assert a[0].read_bytes() != c[0].read_bytes()


def test_fault_seed_reproducible(tmp_path: Path):
    args = ["-e", "1000", "-t", "2", "-u", "30", "--start", START, "--seed", "3",
            "--late-fraction", "0.05", "--duplicate-fraction", "0.05",
            "--malformed-fraction", "0.05", "--skew", "1", "--ctr", "0.2"]
    a = run(tmp_path / "a", *args)
    b = run(tmp_path / "b", *args)
    assert [f.read_bytes() for f in a] == [f.read_bytes() for f in b]


def test_event_id_unique_across_batches(tmp_path: Path):
    files = run(tmp_path, "-e", "5000", "-t", "3", "-u", "20", "--start", START,
                "--event-id", "--seed", "2")
    ids = []
    for f in files:
        header, rows = read_rows(f)
        assert header == ["event_id", *CSV_COLUMNS]
        assert all(len(r) == 7 for r in rows)
        ids += [r[0] for r in rows]
    assert len(ids) == 15000 == len(set(ids))
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)


# --------------------------------------------------------------------------- distributions
def test_ctr(tmp_path: Path):
    files = run(tmp_path, "-e", "50000", "-t", "1", "-u", "10", "--start", START,
                "--ctr", "0.1", "--seed", "4")
    _, rows = read_rows(files[0])
    share = sum(r[1] == "1" for r in rows) / len(rows)
    assert abs(share - 0.1) < 0.01


def test_default_click_share_is_half(tmp_path: Path):
    files = run(tmp_path, "-e", "50000", "-t", "1", "-u", "10", "--start", START, "--seed", "4")
    _, rows = read_rows(files[0])
    assert abs(sum(r[1] == "1" for r in rows) / len(rows) - 0.5) < 0.01


def test_skew(tmp_path: Path):
    base = ["-e", "20000", "-t", "1", "-b", "10", "-p", "20", "-u", "200", "--start", START,
            "--seed", "5"]
    uniform = read_rows(run(tmp_path / "u", *base)[0])[1]
    skewed = read_rows(run(tmp_path / "s", *base, "--skew", "1.2")[0])[1]
    for col, top in ((2, "banner0"), (3, "placement0"), (4, "page0")):
        u, s = Counter(r[col] for r in uniform), Counter(r[col] for r in skewed)
        assert s.most_common(1)[0][0] == top
        assert s[top] > 2 * u[top]
        assert s.most_common()[-1][1] * 3 < s[top]
    su = Counter(r[5] for r in skewed).most_common()
    uu = Counter(r[5] for r in uniform).most_common()
    assert su[0][1] > 5 * uu[0][1]


# --------------------------------------------------------------------------- faults
def test_late_rows(tmp_path: Path):
    files = run(tmp_path, "-e", "2000", "-t", "2", "-u", "20", "--start", START,
                "--late-fraction", "0.1", "--seed", "6")
    for f in files:
        h0 = hour_of(f)
        _, rows = read_rows(f)
        assert len(rows) == 2000
        late = [int(r[0]) for r in rows if int(r[0]) < h0]
        assert len(late) == 200
        assert all(h0 - 3 * 3600 <= t < h0 - 0 for t in late)
        assert all(h0 <= int(r[0]) < h0 + 3600 for r in rows if int(r[0]) >= h0)
        on_time = [int(r[0]) for r in rows if int(r[0]) >= h0]
        assert on_time == sorted(on_time)


def test_duplicates_imply_event_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    files = run(tmp_path, "-e", "1000", "-t", "2", "-u", "20", "--start", START,
                "--duplicate-fraction", "0.05", "--seed", "7")
    assert "event-id" in capsys.readouterr().err
    for f in files:
        header, rows = read_rows(f)
        assert header[0] == "event_id"
        assert len(rows) == 1050
        by_id: dict[str, list[list[str]]] = {}
        for r in rows:
            by_id.setdefault(r[0], []).append(r)
        assert len(by_id) == 1000
        extra = sum(len(v) - 1 for v in by_id.values())
        assert extra == 50
        for group in by_id.values():
            assert all(g == group[0] for g in group)  # exact copies


def _classify(row: list[str], n_cols: int) -> str | None:
    """Kind of a malformed row (None for a good row); with event_id (n_cols == 7)."""
    o = n_cols - 6
    if len(row) == 1 and n_cols > 1:
        return "garbage"
    if len(row) == n_cols - 1:
        return "missing_field"
    assert len(row) == n_cols, row
    if not row[o].isdigit():
        return "bad_timestamp"
    if row[o + 1] not in ("0", "1"):
        return "bad_event_type"
    if row[-1] == "":
        return "empty_user_id"
    if "" in row[o + 2:o + 5]:
        return "empty_dimension"
    return None


@pytest.mark.parametrize("with_id", [False, True])
def test_malformed_rows(tmp_path: Path, with_id: bool):
    extra = ["--event-id"] if with_id else []
    files = run(tmp_path, "-e", "3000", "-t", "2", "-u", "20", "--start", START,
                "--malformed-fraction", "0.02", "--seed", "8", *extra)
    n_cols = 7 if with_id else 6
    for f in files:
        lines = f.read_text().splitlines()
        assert len(lines) == 3001 and all(line.strip() for line in lines)
        _, rows = read_rows(f)
        kinds = Counter(_classify(r, n_cols) for r in rows)
        bad = {k: v for k, v in kinds.items() if k is not None}
        assert sum(bad.values()) == 60
        assert set(bad) == set(gsd.MALFORMED_KINDS)
        assert all(v == 10 for v in bad.values())
        h0 = hour_of(f)
        good = [r for r in rows if _classify(r, n_cols) is None]
        assert all(h0 <= int(r[n_cols - 6]) < h0 + 3600 for r in good)


def test_all_faults_together(tmp_path: Path):
    files = run(tmp_path, "-e", "4000", "-t", "2", "-u", "20", "--start", START, "--seed", "9",
                "--event-id", "--late-fraction", "0.05", "--duplicate-fraction", "0.02",
                "--malformed-fraction", "0.03")
    for f in files:
        h0 = hour_of(f)
        _, rows = read_rows(f)
        assert len(rows) == 4080
        assert sum(_classify(r, 7) is not None for r in rows) == 120
        good = [r for r in rows if _classify(r, 7) is None]
        unique = {r[0]: r for r in good}
        assert len(unique) == 4000 - 120
        assert sum(int(r[1]) < h0 for r in unique.values()) == 200
        assert all(h0 - 3 * 3600 <= int(r[1]) < h0 + 3600 for r in good)


# --------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["-e", "abc"], "must be a positive integer, got 'abc'"),
        (["-e", "0"], "must be a positive integer"),
        (["-e", "-5"], "must be a positive integer"),
        (["-u", "1.5"], "must be a positive integer"),
        (["--ctr", "2"], "--ctr"),
        (["--ctr", "0"], "--ctr"),
        (["--skew", "-1"], "--skew"),
        (["--late-fraction", "1"], "--late-fraction"),
        (["--duplicate-fraction", "-0.1"], "--duplicate-fraction"),
        (["--start", "2024-01-01T05:30"], "whole hour"),
        (["--start", "yesterday"], "--start"),
        (["--seed", "x"], "--seed"),
        (["--late-fraction", "0.6", "--malformed-fraction", "0.6"], "must not exceed 1"),
    ],
)
def test_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str], args, needle):
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path), *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "usage:" in err
    assert not list(tmp_path.glob("*.csv"))


def test_generate_validates(tmp_path: Path):
    with pytest.raises(ValueError):
        generate(tmp_path, n_events=0)
    with pytest.raises(ValueError):
        generate(tmp_path, n_events=10, ctr=1.5)
    with pytest.raises(ValueError):
        generate(tmp_path, n_events=10, start=datetime(2024, 1, 1, 5, 30))


def test_generate_api_returns_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    paths = generate(tmp_path, n_events=100, n_batches=2, n_users=10, start=START_DT, seed=1,
                     quiet=False)
    assert paths == sorted(tmp_path.glob("*.csv"))
    out = capsys.readouterr().out
    assert out.count("wrote ") == 2 and "events/s" in out


def test_quiet(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    run(tmp_path, "-e", "10", "-t", "1", "-u", "3", "--start", START)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_script_help_subprocess():
    proc = subprocess.run([sys.executable, str(SCRIPT), "-h"], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: generate_sample_data.py")
    assert "Generate one or more batches (tables) with ad sample data spanning one hour." in (
        " ".join(proc.stdout.split())
    )
    for opt in ("--n-events", "--n-banners", "--n-pages", "--n-batches", "--n-users"):
        assert opt in proc.stdout
