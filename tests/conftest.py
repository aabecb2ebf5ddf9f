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


_RAY_STARTED_HERE = False  # whether this process's Ray is the fixture's (started on first use, stopped after the group)


def _start_ray():
    import warnings

    global _RAY_STARTED_HERE
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            # address="local": a new Ray of our own even where another one runs or a stale session file exists
            ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        _RAY_STARTED_HERE = True
    return ray


def _stop_ray():
    global _RAY_STARTED_HERE
    if _RAY_STARTED_HERE:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        _RAY_STARTED_HERE = False


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray (2 CPUs) for every test of backend=ray: the backend must use it and never stop it. Started on
    first use; stopped once the worker's next test is outside the group "ray" (below), so that its processes do not
    idle beside the rest of the suite."""
    yield _start_ray()
    _stop_ray()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if "ray_session" in getattr(item, "fixturenames", ()) and not _RAY_STARTED_HERE:
        _start_ray()  # the session fixture is cached: a ray_session test after the group stopped Ray starts it again


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield  # after the item's fixtures (a class's Ray pool, say) are torn down
    if nextitem is None or not _in_ray_group(nextitem):
        _stop_ray()


# Tests that start Ray (the shared session, a head of their own) or Flower's processes run on one
# pytest-xdist worker, one after another: two Rays at once would each claim both cores. A test of these files
# marked with another xdist group (one whose subprocess starts a small Ray of its own) runs beside them instead.
_RAY_FILES = {"test_ray_backend.py", "test_flower_simulation.py", "test_flower_deployment.py"}


def _in_ray_group(item) -> bool:
    marker = item.get_closest_marker("xdist_group")
    if marker is not None:
        return (marker.args[0] if marker.args else marker.kwargs.get("name")) == "ray"
    return item.path.name in _RAY_FILES or "ray_session" in getattr(item, "fixturenames", ())


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which turns the marker into the "@ray" that groups items
def pytest_collection_modifyitems(config, items):
    for item in items:
        if _in_ray_group(item):
            item.add_marker(pytest.mark.xdist_group("ray"))
