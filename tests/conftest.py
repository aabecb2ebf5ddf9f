import os

import pytest
from hydra import compose, initialize_config_module

os.environ.setdefault("HYDRA_FULL_ERROR", "0")


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
            ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield ray
    if started and ray.is_initialized():
        ray.shutdown()
