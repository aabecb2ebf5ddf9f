"""Per-client evaluation (``eval.clients``): each client's model on its own local test rows (docs/evaluation.md)."""

from .config import EvalConfig, check_eval_config, check_eval_data, evaluated_clients
from .engine import ClientEvaluator, client_models
from .scores import distribution_columns, own_model_scores, sequential_scores, shared_model_scores, worst_share_mean

__all__ = [
    "ClientEvaluator",
    "EvalConfig",
    "check_eval_config",
    "check_eval_data",
    "client_models",
    "distribution_columns",
    "evaluated_clients",
    "own_model_scores",
    "sequential_scores",
    "shared_model_scores",
    "worst_share_mean",
]
