"""The ``dp`` config group: every value checked, the sampling read from the participation, the
noise multiplier found for a target epsilon, all before any work (docs/privacy.md)."""

from __future__ import annotations

import logging
import math
from typing import Any

from sim.errors import ConfigError
from sim.privacy import NEIGHBOURS, POISSON, WITHOUT_REPLACEMENT, noise_for_target
from sim.validation import boolean, choice, number

from ..base import Strategy
from ..fedavg import FedAvg
from .wrappers import SIDES, VARIANTS, Accounting, CentralDP, LocalDP

log = logging.getLogger(__name__)

KINDS = ("central", "local")
REPLACE_ONE = NEIGHBOURS[WITHOUT_REPLACEMENT]
CLIPPINGS = ("fixed", "adaptive")
KEYS = {
    "central": {
        "kind", "side", "clipping", "clipping_norm", "noise_multiplier", "target_epsilon", "delta",
        "sampling_amplification", "target_quantile", "clip_lr", "clipped_count_stddev", "variant",
    },
    "local": {"kind", "clipping_norm", "sensitivity", "epsilon", "delta"},
}  # fmt: skip


def _positive(field: str, value: Any, allow_zero: bool = False) -> float:
    return number(f"dp.{field}", value, 0, lo_open=not allow_zero)


def _delta(value: Any) -> float:
    return number("dp.delta", value, 0, 1, lo_open=True, hi_open=True, detail="It is a probability of failure.")


def sampling(cfg) -> tuple[float, float, str]:
    """``(clients sampled per round m, each client's sampling rate q, the sampling scheme)``.

    ``uniform`` samples m of N without replacement (q = m / N, sim.privacy.WITHOUT_REPLACEMENT);
    ``bernoulli`` with a constant p samples each client with probability p (m = p N in expectation,
    sim.privacy.POISSON). Patterns whose presence
    depends on the past (markov, cyclic) or on the client's labels (correlated p_n) have no
    sampling rate the accountant could use.
    """
    from sim.participation import UniformParticipation, build_participation

    participation = build_participation(cfg.participation, int(cfg.num_clients), int(cfg.seed))
    if isinstance(participation, UniformParticipation):
        m = participation.clients_per_round
        return float(m), m / participation.num_clients, WITHOUT_REPLACEMENT
    name = cfg.participation.get("name")
    if name == "bernoulli" and cfg.participation.get("probability") == "constant":
        p = float(cfg.participation.get("p"))
        return p * int(cfg.num_clients), p, POISSON
    raise ConfigError(
        "participation",
        name,
        "uniform, or bernoulli with probability=constant, when dp is on",
        "The privacy accountant needs one sampling rate per round, independent of the past and of "
        "the clients' data; markov and cyclic patterns and label-correlated p_n have none.",
    )


def build_dp(dp_cfg, strategy: Strategy, cfg) -> Strategy:
    """``strategy`` inside the configured DP layer; ConfigError on any bad value, before any work."""
    options = dict(dp_cfg)
    label = str(options.pop("name", "dp"))
    if cfg.get("mode") == "gossip":
        raise ConfigError(
            "dp",
            label,
            "none in mode=gossip",
            "The DP wrappers clip updates against a server's global model and account for a server "
            "that samples clients; a gossip node has neither.",
        )
    kind = choice("dp.kind", options.get("kind"), KINDS)
    unknown = sorted(set(options) - KEYS[kind])
    if unknown:
        raise ConfigError(
            f"dp.{unknown[0]}", options[unknown[0]], f"one of the {kind} keys: {', '.join(sorted(KEYS[kind]))}"
        )
    if kind == "local":
        return _local(options, label, strategy, cfg)
    return _central(options, label, strategy, cfg)


def _local(options: dict, label: str, strategy: Strategy, cfg) -> Strategy:
    clip = _positive("clipping_norm", options.get("clipping_norm"))
    sensitivity = _positive("sensitivity", options.get("sensitivity"), allow_zero=True)
    eps = _positive("epsilon", options.get("epsilon"))
    delta = _delta(options.get("delta"))
    std = sensitivity * math.sqrt(2 * math.log(1.25 / delta)) / eps  # Flower's LocalDpMod
    if sensitivity < 2 * clip:
        log.warning(
            "dp.sensitivity=%g is below 2 dp.clipping_norm = %g, what one client's clipped update can change by: "
            "a release is not (dp.epsilon, dp.delta)-DP; dp_epsilon accounts for the true sensitivity.",
            sensitivity,
            2 * clip,
        )
    # each client's release is a Gaussian mechanism of std `std` on an update that moves by up to 2 C when the
    # client's data are replaced, seen by the server whether or not the client was sampled: no amplification
    accounting = Accounting(
        sample_rate=1.0, noise_multiplier=std / clip, delta=delta, sensitivity=2.0, neighbours=REPLACE_ONE
    )
    return LocalDP(strategy, label=label, seed=int(cfg.seed), accounting=accounting, clipping_norm=clip, std=std)


def _central(options: dict, label: str, strategy: Strategy, cfg) -> Strategy:
    side = choice("dp.side", options.get("side", "server"), SIDES)
    adaptive = choice("dp.clipping", options.get("clipping", "fixed"), CLIPPINGS) == "adaptive"
    clip = _positive("clipping_norm", options.get("clipping_norm"))
    z = _positive("noise_multiplier", options.get("noise_multiplier"), allow_zero=True)
    target = options.get("target_epsilon")
    if target is not None:
        target = _positive("target_epsilon", target)
    delta = _delta(options.get("delta"))
    amplify = boolean("dp.sampling_amplification", options.get("sampling_amplification", True))
    adaptive_options: dict[str, Any] = {}
    if adaptive:
        adaptive_options = {
            "target_quantile": number("dp.target_quantile", options.get("target_quantile", 0.5), 0, 1),
            "clip_lr": _positive("clip_lr", options.get("clip_lr", 0.2)),
            "variant": choice("dp.variant", options.get("variant", "andrew"), VARIANTS),
        }
        count_stddev = options.get("clipped_count_stddev")
        if count_stddev is not None:
            count_stddev = _positive("clipped_count_stddev", count_stddev, allow_zero=True)
    m, q, scheme = sampling(cfg)
    if adaptive and scheme == POISSON:
        raise ConfigError(
            "participation",
            cfg.participation.get("name"),
            "uniform with adaptive clipping",
            "Adaptive clipping divides the noisy count by the random number of Poisson participants, which "
            "the accountant cannot bound; use participation=uniform or dp.clipping=fixed.",
        )
    # L2 sensitivity of the uniform mean of the clipped updates, in units of C / m (the noise is z C / m):
    # replacing one client's data moves a mean of exactly m by 2 C / m; adding a client to K Poisson
    # participants moves their mean by up to 2 C / (K + 1), and by C when K = 0 or 1: m in units of C / m.
    sensitivity = 2.0 if scheme == WITHOUT_REPLACEMENT else m
    if adaptive and adaptive_options["variant"] == "flower":
        sensitivity = math.inf  # noise scaled by the norm after a data-dependent update: no finite bound
    caveat = ""
    if not (isinstance(strategy, FedAvg) and strategy.weighting == "uniform" and strategy.server_lr == 1.0):
        caveat = f"dp_epsilon bounds a uniform average of the clipped models; strategy {strategy.name} is not one"
        log.warning("dp=%s: the noise z C / m is calibrated to it; %s (docs/privacy.md).", label, caveat)
    rate, analysis = (q, scheme) if amplify else (1.0, POISSON)
    if target is not None:
        if math.isinf(sensitivity):
            raise ConfigError(
                "dp.target_epsilon",
                target,
                "null with dp.variant=flower",
                "Flower's adaptive clipping scales the noise by the norm after a data-dependent update, so no "
                "noise multiplier meets an epsilon; use dp.variant=andrew.",
            )
        z = sensitivity * noise_for_target(target, delta, rate, int(cfg.rounds), analysis)
        log.info(
            "dp=%s: noise multiplier %.6g meets dp.target_epsilon=%g over %d round(s) at delta=%g",
            label,
            z,
            target,
            int(cfg.rounds),
            delta,
        )
    neighbours = REPLACE_ONE if scheme == WITHOUT_REPLACEMENT else NEIGHBOURS[POISSON]
    accounting = Accounting(
        rate, z, delta, sampling=analysis, sensitivity=sensitivity, neighbours=neighbours, caveat=caveat
    )
    if adaptive:
        stddev, update_z = adaptive_noise(z, m, count_stddev, target is not None)
        adaptive_options.update(clipped_count_stddev=stddev, update_noise_multiplier=update_z)
    return CentralDP(
        strategy,
        label=label,
        seed=int(cfg.seed),
        accounting=accounting,
        clipping_norm=clip,
        num_sampled_clients=m,
        side=side,
        adaptive=adaptive,
        **adaptive_options,
    )


def adaptive_noise(z: float, m: float, count_stddev: float | None, from_target: bool) -> tuple[float, float]:
    """Flower's ``compute_adaptive_noise_params`` (Andrew et al. Theorem 1): ``(sigma_b, z_delta)``.

    The count's noise sigma_b (default m / 20) and the update's z_delta together spend z:
    ``z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2``, which needs ``z < 2 sigma_b``.
    """
    if z == 0:
        return (0.0 if count_stddev is None else count_stddev), 0.0
    stddev = m / 20 if count_stddev is None else count_stddev
    if z >= 2 * stddev:
        source = "the noise multiplier found for dp.target_epsilon" if from_target else "dp.noise_multiplier"
        raise ConfigError(
            "dp.clipped_count_stddev",
            count_stddev,
            f"a noise on the clipped count above {source} / 2 = {z / 2:g}",
            f"Adaptive clipping spends part of the privacy on counting clipped updates; with "
            f"sigma_b = {stddev:g} (default: clients per round / 20) nothing is left for the update "
            f"noise at z = {z:g}. Raise dp.clipped_count_stddev, sample more clients, or lower the noise.",
        )
    return stddev, (z**-2 - (2 * stddev) ** -2) ** -0.5
