"""fedadagrad, q-FedAvg and the DP wrappers give the same run on the sequential and vectorized backends.

Whole runs through the real FL loop (``run_experiment``), compared column by column (1e-5): the
rules themselves are server-side, so what must agree is everything the backends feed them (models,
``start_loss``) and the seeded noise of DP.
"""

import pandas as pd
import pytest

from sim.run import run_experiment

CASES = {
    "fedadagrad": ("strategy=fedadagrad",),
    "qfedavg": ("strategy=qfedavg", "strategy.q=1.0"),
    "dp_central_fixed": ("dp=central_fixed", "dp.noise_multiplier=0.5"),
    "dp_central_adaptive": ("dp=central_adaptive", "dp.clipped_count_stddev=1.0"),
    "dp_local": ("dp=local",),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_run_is_the_same_on_the_sequential_and_vectorized_backends(make_cfg, tmp_path, name):
    # Prepare
    common = ("num_clients=10", "participation.clients_per_round=5", "model.hidden=[8]", "rounds=3")
    frames = {}
    # Execute
    for backend in ("sequential", "vectorized"):
        cfg = make_cfg(*common, *CASES[name], f"backend={backend}")
        run_experiment(cfg, tmp_path / backend, progress=False)
        frames[backend] = pd.read_csv(tmp_path / backend / "metrics.csv").drop(columns="wall_s")
    # Assert: every column but wall time, every round
    seq, vec = frames["sequential"], frames["vectorized"]
    assert list(seq.columns) == list(vec.columns) and len(seq) == 4
    pd.testing.assert_frame_equal(seq, vec, rtol=1e-5, atol=1e-5)
    assert seq["test_accuracy"].iloc[-1] > 0.0
