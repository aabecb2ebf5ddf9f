"""experiments/system_heterogeneity_report.py: the fast-device-bias and time-to-target numbers of
system_heterogeneity.md, by hand on tiny tables (the runs themselves are the experiment's, not the suite's)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rep():
    spec = importlib.util.spec_from_file_location("sh_report", ROOT / "experiments" / "system_heterogeneity_report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def clients(seed: int, kept: list[int]) -> pd.DataFrame:
    """Six clients, task times 1..6 s (so thirds {1,2}, {3,4}, {5,6}), each selected 4 times, 2 classes."""
    return pd.DataFrame(
        {
            "method": "deadline",
            "seed": seed,
            "client": range(6),
            "task_s": [3.0, 1.0, 6.0, 2.0, 5.0, 4.0],  # rank order differs from client order
            "samples": [10, 10, 20, 10, 20, 10],
            "selected": 4,
            "kept": kept,
            "labels": ["10 0", "10 0", "0 20", "5 5", "0 20", "10 0"],
        }
    )


def test_kept_share_by_speed_third_lost_samples_and_label_drift(rep) -> None:
    # seed 0: the two slowest (clients 2 and 4, 20 samples of class 1 each) never kept, client 5 (4 s) kept twice
    table = pd.concat([clients(0, [4, 4, 0, 4, 0, 2]), clients(1, [4, 4, 4, 4, 4, 4])], ignore_index=True)
    shares = rep._tertile_shares(table).set_index(["seed", "tertile"])["share"]
    assert shares[0, "fast"] == 1.0 and shares[0, "middle"] == pytest.approx(6 / 8) and shares[0, "slow"] == 0.0
    assert set(shares[1]) == {1.0}
    drift = rep._label_drift(table).set_index("seed")
    # selected sample-rounds: 4 x 80 = 320; lost: 4 x (20 + 20) + 2 x 10 = 180
    assert drift.loc[0, "lost"] == pytest.approx(180 / 320) and drift.loc[1, "lost"] == 0.0
    # label mix: selected 4 x (35, 45) -> (0.4375, 0.5625); kept 4 x (10+10+5) + 2 x 10 = 120 of class 0, 4 x 5 = 20
    assert drift.loc[0, "tv"] == pytest.approx(abs(120 / 140 - 0.4375)) and drift.loc[1, "tv"] == 0.0
    assert drift.loc[0, "never"] == 2 and drift.loc[1, "never"] == 0


def test_time_to_a_target_from_the_curves(rep) -> None:
    curves = pd.DataFrame(
        {
            "seed": [0, 0, 0, 1, 1, 1],
            "time_s": [0.0, 2.5, 4.0, 0.0, 3.0, 9.0],
            "test_accuracy": [0.1, 0.92, 0.95, 0.1, 0.5, 0.91],
        }
    )
    got = rep.time_to(curves, 0.92)["t"]
    assert got[0] == 2.5 and math.isnan(got[1])  # reached exactly at 0.92; seed 1 never
    assert rep.to_target(rep.time_to(curves, 0.92), "t") == "2.5 ± — (1/2)"
    assert rep.to_target(rep.time_to(curves, 0.99), "t") == "not reached (0/2)"
    assert list(rep.acc_at(curves, 3.0)) == pytest.approx([0.92 + 0.03 * 0.5 / 1.5, 0.5])
