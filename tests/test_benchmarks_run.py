"""The benchmark scripts run end to end at tiny sizes (their figures are for people, not asserts); each a process of
its own, forked from a server that imported torch once (forked_cli.py)."""

from pathlib import Path

import pytest
from forked_cli import run_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_scale_smoke_prints_its_tables():
    proc = run_script(
        ROOT / "experiments" / "bench_scale.py", ["--smoke", "--parts", "w2", "scale", "aggregate"], ROOT, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "W2: synchronous gossip" in out and "Scale:" in out and "Aggregation:" in out
    w2_rows = [line.split() for line in out.splitlines() if line.startswith(("sequential", "vectorized"))]
    assert len(w2_rows) == 2 and w2_rows[0][-1] == w2_rows[1][-1]  # same accuracy on both backends


@pytest.mark.slow
def test_bench_byo_smoke_prints_its_table():
    proc = run_script(ROOT / "experiments" / "bench_byo.py", ["--smoke", "--rounds", "1"], ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith(("| resnet8", "| lenet"))]
    assert len(rows) == 4 and all("x |" in row for row in rows)


@pytest.mark.slow
def test_bench_checkpoint_smoke_prints_its_table():
    proc = run_script(ROOT / "experiments" / "bench_checkpoint.py", ["--smoke", "--repeats", "1"], ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split("|") for line in proc.stdout.splitlines() if "(smoke)" in line]
    assert len(rows) == 6  # two workloads x (none, every 10, every 1)
    sizes = [float(r[5]) for r in rows]
    assert sizes[0] == 0 and all(s > 0 for s in sizes[1:3]) and sizes[3] == 0 and all(s > 0 for s in sizes[4:])
