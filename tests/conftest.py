import os

import pytest
import torch
from hydra import compose, initialize_config_module

os.environ.setdefault("HYDRA_FULL_ERROR", "0")
# One torch thread in the tests and in every process they start (sim.threads caps its automatic
# count at OMP_NUM_THREADS): the tests' models are tiny, and on a busy machine torch's default of a
# spinning thread per core made the suite many times slower. A test that needs more sets them itself.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"
torch.set_num_threads(1)


@pytest.fixture
def make_cfg():
    """Compose the project's Hydra config with overrides, exactly as ``python -m sim`` would."""

    def _make(*overrides: str):
        with initialize_config_module(config_module="configs", version_base="1.3"):
            return compose(config_name="config", overrides=["progress=false", *overrides])

    return _make


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray (2 CPUs) for every test of backend=ray: the backend must use it and never stop it."""
    import warnings

    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            # address="local": a new Ray of our own even where another one runs or a stale session file exists
            ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield ray
    if started and ray.is_initialized():
        ray.shutdown()


# Tests that start Ray (the shared session, a head of their own) or Flower's processes run on one
# pytest-xdist worker, one after another: two Rays at once would each claim both cores.
_RAY_FILES = {"test_ray_backend.py", "test_flower_simulation.py", "test_flower_deployment.py", "test_backend_config.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in _RAY_FILES or "ray_session" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("ray"))
