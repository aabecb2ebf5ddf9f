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
