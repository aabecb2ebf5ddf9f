"""The robust-aggregation benchmark runs end to end at a tiny size (its figures are for people, not asserts)."""

from pathlib import Path

import pytest
from forked_cli import run_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_robust_smoke_prints_a_row_per_rule():
    proc = run_script(ROOT / "experiments" / "bench_robust.py", ["--smoke"], ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line for line in proc.stdout.splitlines() if line.startswith("| ")}
    for rule in (
        "fedavg",
        "median",
        "trimmed_mean",
        "meamed",
        "krum",
        "multi_krum",
        "bulyan",
        "centered_clipping",
        "clipped_gossip",
        "nnm+fedavg",
        "bucketing+fedavg",
        "clipping+fedavg",
        "arc+fedavg",
    ):
        assert rule in rows and rows[rule].rstrip().endswith("x |"), proc.stdout
    assert rows["fedavg"].split("|")[3].strip() == "1.0x"
