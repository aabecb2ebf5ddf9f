"""Client data for the simulator: sources (digits, synthetic, npz), partitioners, one container.

``validate_data_config`` checks the ``dataset`` / ``partition`` configs without touching data;
``load_federated_data`` builds the :class:`FederatedData` that every backend reads.
"""

from .config import validate_data_config
from .federated import load_federated_data
from .types import FederatedData

__all__ = ["FederatedData", "load_federated_data", "validate_data_config"]
