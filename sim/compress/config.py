"""The ``compress`` config group: checked values and the compressor they build.

Every check runs before any work (sim/experiment.py's ``validate_config`` calls :func:`check_compress_run`)
and names the field; in an FL run the rules that cannot take compressed uploads are refused there too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sim.errors import ConfigError
from sim.validation import boolean, choice, integer, number

from .compressors import QSGD, Compressor, Quantize, RandomK, ScaledSign, TopK

NAMES = ("none", "topk", "randomk", "qsgd", "sign", "quantize")
BITS = (4, 8)


@dataclass(frozen=True)
class CompressConfig:
    name: str = "none"
    fraction: float = 1.0
    levels: int = 1
    bits: int = 8
    scaled: bool = False
    rescaled: bool = False
    error_feedback: bool = False
    downlink: bool = False

    @classmethod
    def from_config(cls, cfg: Any) -> CompressConfig:
        """The checked block (None or ``name: none``: no compression)."""
        get = (lambda key, default: default) if cfg is None else cfg.get
        name = choice("compress.name", get("name", "none"), NAMES)
        conf: dict[str, Any] = {"name": name}
        if name in ("topk", "randomk"):
            conf["fraction"] = number(
                "compress.fraction", get("fraction", None), 0, 1, lo_open=True, allowed="a number in (0, 1]"
            )
        if name == "randomk":
            conf["scaled"] = boolean("compress.scaled", get("scaled", False), "(multiply the sent entries by P / k)")
        if name == "qsgd":
            conf["levels"] = integer("compress.levels", get("levels", None), 1, allowed="an integer >= 1 (QSGD's s)")
            conf["rescaled"] = boolean("compress.rescaled", get("rescaled", False), "(divide by QSGD's tau)")
        if name == "quantize":
            bits = get("bits", None)
            if bits not in BITS:  # True == 1 is not in it either
                raise ConfigError("compress.bits", bits, "4 or 8 (bits per value of uniform quantization)")
            conf["bits"] = int(bits)
        if name != "none":
            feedback = get("error_feedback", False)  # null (the configs' auto): on; CHOCO never reads it (choco.py)
            conf["error_feedback"] = feedback is None or boolean(
                "compress.error_feedback", feedback, "(a residual per client), or null (auto)"
            )
            conf["downlink"] = boolean("compress.downlink", get("downlink", False), "(compress the FL broadcast)")
        return cls(**conf)

    def build(self) -> Compressor | None:
        if self.name == "topk":
            return TopK(self.fraction)
        if self.name == "randomk":
            return RandomK(self.fraction, self.scaled)
        if self.name == "qsgd":
            return QSGD(self.levels, self.rescaled)
        if self.name == "sign":
            return ScaledSign()
        if self.name == "quantize":
            return Quantize(self.bits)
        return None


def build_compressor(cfg_compress: Any) -> Compressor | None:
    """The compressor of the ``compress`` block, or None for ``compress=none`` (and for no block at all)."""
    return CompressConfig.from_config(cfg_compress).build()


#: per-client extras as large as the model: a rule that needs them needs what compression leaves out
MODEL_SIZED_EXTRAS = frozenset({"fisher"})


def refuse_model_sized_extras(conf: CompressConfig, strategy: Any, why: str) -> None:
    """ConfigError when ``strategy`` needs a per-client extra as large as the model (FL uploads and gossip
    messages alike: the extra would travel uncompressed beside the compressed model); ``why`` says what the
    run's messages carry, with ``{needs}`` for the extras' names."""
    needs = sorted(MODEL_SIZED_EXTRAS & set(strategy.requires))
    if needs:
        raise ConfigError(
            "compress.name", conf.name, f"none with strategy={strategy.name}", why.format(needs=", ".join(needs))
        )


def check_compress_run(cfg: Any, mode: str, strategy: Any) -> CompressConfig:
    """The checked ``compress`` block (every mode), and in FL the combinations refused before any work.

    Refused in FL: a rule that needs a per-client extra as large as the model (fisher_merge's Fisher,
    which would have to travel uncompressed beside the compressed model), and asynchronous FL (its
    uploads are not compressed: sim/async_fl/ has no residual per task, so the setting would be ignored).
    """
    conf = CompressConfig.from_config(cfg.get("compress"))
    if conf.name == "none" or mode != "federated":
        return conf
    refuse_model_sized_extras(
        conf,
        strategy,
        "The rule needs each client's exact {needs} (as large as the model) beside its model; "
        "compressed uploads carry only the compressed model update.",
    )
    schedule = (cfg.get("federated") or {}).get("schedule", "sync")
    if schedule == "async":
        raise ConfigError(
            "compress.name",
            conf.name,
            "none with federated.schedule=async",
            "Compressed uploads run in synchronous FL (federated.schedule=sync) and in gossip.",
        )
    return conf
