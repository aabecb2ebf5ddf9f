"""Reference attacks for tests/test_attacks_ref.py: ByzFL 0.0.11's, and Min-Max / Min-Sum as their authors wrote them.

``import byzfl`` fails here: its ``__init__`` imports the benchmark, which imports torchvision, and
PyPI's torchvision does not load against this machine's CPU torch. Its ``attacks`` subpackage needs
only torch and numpy, so a bare ``byzfl`` package module whose ``__path__`` is the installed folder
is registered first (``pip install byzfl --no-deps``). Tests skip when byzfl is not installed.

ByzFL 0.0.11 has no Min-Max / Min-Sum; :func:`min_max_reference` and :func:`min_sum_reference`
transcribe ``our_attack_dist`` / ``our_attack_score`` of Shejwalkar & Houmansadr's NDSS 2021 code
(torch, one loop step at a time), with the starting lambda and threshold as arguments.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import torch


def byzfl_attacks():
    """ByzFL's ``byzfl.attacks.attacks`` module, or None when byzfl is not installed."""
    if "byzfl" not in sys.modules:
        spec = importlib.util.find_spec("byzfl")
        if spec is None or not spec.submodule_search_locations:
            return None
        package = types.ModuleType("byzfl")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["byzfl"] = package
    return importlib.import_module("byzfl.attacks.attacks")


def _deviation(all_updates: torch.Tensor, model_re: torch.Tensor, dev_type: str) -> torch.Tensor:
    if dev_type == "unit_vec":
        return model_re / torch.norm(model_re)
    if dev_type == "sign":
        return torch.sign(model_re)
    return torch.std(all_updates, 0)


def min_max_reference(all_updates, dev_type="std", lamda_init=10.0, threshold_diff=1e-5) -> torch.Tensor:
    model_re = torch.mean(all_updates, 0)
    deviation = _deviation(all_updates, model_re, dev_type)
    lamda = torch.tensor([lamda_init], dtype=all_updates.dtype)
    lamda_fail = lamda
    lamda_succ = 0
    distances = []
    for update in all_updates:
        distance = torch.norm((all_updates - update), dim=1) ** 2
        distances = distance[None, :] if not len(distances) else torch.cat((distances, distance[None, :]), 0)
    max_distance = torch.max(distances)
    while torch.abs(lamda_succ - lamda) > threshold_diff:
        mal_update = model_re - lamda * deviation
        distance = torch.norm((all_updates - mal_update), dim=1) ** 2
        max_d = torch.max(distance)
        if max_d <= max_distance:
            lamda_succ = lamda
            lamda = lamda + lamda_fail / 2
        else:
            lamda = lamda - lamda_fail / 2
        lamda_fail = lamda_fail / 2
    return model_re - lamda_succ * deviation


def min_sum_reference(all_updates, dev_type="std", lamda_init=10.0, threshold_diff=1e-5) -> torch.Tensor:
    model_re = torch.mean(all_updates, 0)
    deviation = _deviation(all_updates, model_re, dev_type)
    lamda = torch.tensor([lamda_init], dtype=all_updates.dtype)
    lamda_fail = lamda
    lamda_succ = 0
    distances = []
    for update in all_updates:
        distance = torch.norm((all_updates - update), dim=1) ** 2
        distances = distance[None, :] if not len(distances) else torch.cat((distances, distance[None, :]), 0)
    scores = torch.sum(distances, dim=1)
    min_score = torch.min(scores)
    while torch.abs(lamda_succ - lamda) > threshold_diff:
        mal_update = model_re - lamda * deviation
        distance = torch.norm((all_updates - mal_update), dim=1) ** 2
        score = torch.sum(distance)
        if score <= min_score:
            lamda_succ = lamda
            lamda = lamda + lamda_fail / 2
        else:
            lamda = lamda - lamda_fail / 2
        lamda_fail = lamda_fail / 2
    return model_re - lamda_succ * deviation
