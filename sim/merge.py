"""``python -m sim.merge``: merge saved checkpoints with any strategy and score every ingredient.

The ingredients are ``model.safetensors`` files (paths, or folders such as a multirun, searched
recursively). The data to score them on is rebuilt from the ``summary.json`` beside the first
checkpoint (its resolved config: dataset, partition, seed), so a sweep's models are scored on the
validation and test splits they were trained against. The table has one row per ingredient, the
``--base`` model if one is given, the merge, and the logit ensemble of all ingredients (K times the
inference cost) for comparison. The merged checkpoint goes to ``--out`` (default
``merged_<method>.safetensors`` in the first checkpoint's run folder); its path is printed.

Every option and file is checked before any model is merged or scored: a bad one ends the command
with ``error: ...`` (exit code 2) and writes nothing. ``--device`` (``auto | cpu | cuda | cuda:N``, as
``backend.device``) is where the merge and the scoring run: the data set and the ingredients go there once.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError, GossipsoupError

if TYPE_CHECKING:
    import torch

NEEDS_BASE = ("interpolate", "task_arithmetic", "ties", "dare")
NOT_OPTIONS = ("name", "_target_")  # strategy config keys that say which class, not how it merges


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"Did you mean {close[0]!r}?" if close else ""


def check_args(args: argparse.Namespace) -> None:
    """Refuse option values that are wrong whatever the checkpoints are (nothing is read yet)."""
    if args.fisher_rows < 1:
        raise ConfigError(
            "--fisher-rows",
            args.fisher_rows,
            "a whole number >= 1",
            "The Fisher diagonals are averaged over that many training rows.",
        )
    if args.shift_pixels < 0:
        raise ConfigError("--shift-pixels", args.shift_pixels, "a whole number >= 0 (images move to the right)")
    if not math.isfinite(args.shift_noise) or args.shift_noise < 0:
        raise ConfigError("--shift-noise", args.shift_noise, "a finite standard deviation >= 0")
    _check_device_name(args.device)
    for option in ("out", "csv"):
        path = getattr(args, option)
        if path is not None and Path(path).is_dir():
            raise ConfigError(f"--{option}", path, "the path of a file", "An existing folder has that name.")


def _check_device_name(value: str) -> None:
    """The spelling of --device, before torch is imported (whether a GPU exists is asked later)."""
    import re

    if not re.fullmatch(r"auto|cpu|cuda|cuda:\d+", value):
        raise ConfigError("--device", value, "auto (cuda when torch sees a CUDA GPU, else cpu), cpu, cuda or cuda:N")


def find_checkpoints(paths: list[str]) -> list[Path]:
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(p.rglob("model.safetensors"))
        elif p.exists():
            found.append(p)
        else:
            raise ConfigError(
                "CHECKPOINT", str(p), "an existing .safetensors file or a folder holding model.safetensors"
            )
    if len(found) < 2:
        raise ConfigError("CHECKPOINT", " ".join(paths), "at least two checkpoints to merge", f"Found {len(found)}.")
    return found


def check_same_layout(first: Path, layout, other: Path, other_layout, field: str = "CHECKPOINT") -> None:
    if other_layout == layout:
        return
    # strict=False: the layouts may differ in length; the first mismatch within the shorter one is reported
    for a, b in zip(layout.specs, other_layout.specs, strict=False):
        if a.name != b.name or a.shape != b.shape:
            raise ConfigError(
                field,
                str(other),
                f"a checkpoint with the layout of {first}",
                f"The first mismatched tensor is {a.name} {list(a.shape)} against {b.name} {list(b.shape)}.",
            )
    raise ConfigError(
        field,
        str(other),
        f"a checkpoint with the layout of {first}",
        f"It has {len(other_layout)} tensors, the first has {len(layout)}.",
    )


def _option_value(item: str, key: str, raw: str, default: object) -> object:
    """``raw`` parsed as YAML, refused when the option's default says it must be a number or a boolean."""
    import yaml

    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ConfigError("--set", item, f"{key}=VALUE with VALUE a YAML scalar") from None
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError("--set", item, f"{key}=true or {key}=false")
    elif isinstance(default, (int, float)):
        if isinstance(value, str):  # YAML reads 1e-6 (no dot) as text
            try:
                value = float(value) if value.strip() else value
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError("--set", item, f"{key}=NUMBER", f"The option {key} is a number (default {default}).")
    return value


def strategy_config(method: str, settings: list[str], seed: int) -> dict:
    from omegaconf import OmegaConf

    import configs

    from .schema import config_dict

    path = Path(configs.__file__).parent / "strategy" / f"{method}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError("--method", method, f"one of {', '.join(names)}", _did_you_mean(method, names))
    cfg = OmegaConf.create({"seed": seed, "strategy": OmegaConf.load(path)})
    options = [k for k in cfg.strategy if k not in NOT_OPTIONS]
    for item in settings:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key not in options:
            hint = f"The {method} options are {', '.join(options)}." if options else f"{method} has no options."
            raise ConfigError(
                "--set",
                item,
                "KEY=VALUE with KEY an option of the method",
                " ".join(filter(None, [hint, _did_you_mean(key, options) if sep else ""])),
            )
        cfg.strategy[key] = _option_value(item, key, raw, config_dict(cfg.strategy, resolve=False)[key])
    return config_dict(cfg)["strategy"]


def load_run(checkpoint: Path):
    """The experiment (data, model) a checkpoint was trained in, from its run's summary.json."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from .experiment import build_experiment

    summary = checkpoint.parent / "summary.json"
    if not summary.is_file():
        raise ConfigError(
            "CHECKPOINT",
            str(checkpoint),
            "a checkpoint inside its run folder (beside summary.json)",
            "The data to score on is rebuilt from that run's config.",
        )
    try:
        config = json.loads(summary.read_text(encoding="utf-8")).get("config")
    except (ValueError, AttributeError, OSError) as exc:  # not JSON, not an object, unreadable
        raise ConfigError(
            "summary.json",
            str(summary),
            "a JSON object with the run's resolved config",
            f"Reading it failed: {exc.__class__.__name__}: {exc}",
        ) from None
    if not isinstance(config, dict) or not config:
        raise ConfigError(
            "summary.json",
            str(summary),
            "a JSON object with the run's resolved config",
            "Its 'config' entry is missing or not an object.",
        )
    try:
        return build_experiment(OmegaConf.create(config))
    except (ConfigError, OmegaConfBaseException, KeyError, TypeError) as exc:
        raise ConfigError(
            "summary.json",
            str(summary),
            "the resolved config of a run this version can rebuild",
            f"Its 'config' entry is not usable: {exc}",
        ) from None


def shifted_test(data, noise: float, pixels: int) -> torch.Tensor:
    """The test inputs under a distribution shift: images moved ``pixels`` to the right (zeros
    enter on the left) plus Gaussian noise of std ``noise`` (a fixed stream), clipped to the
    training range."""
    import torch

    pixels_u8 = data.x_test.dtype == torch.uint8  # stored 0..255 pixels: noise is in units of the full range
    x = data.x_test.reshape(-1, *data.input_shape).to(torch.float32)
    if pixels:
        x = torch.roll(x, shifts=pixels, dims=-1)
        x[..., :pixels] = 0.0
    if noise:
        scale = 255.0 if pixels_u8 else 1.0
        x = x + noise * scale * torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).to(x.device)
    lo, hi = float(data.x.min()), float(data.x.max())
    shifted = x.reshape(len(x), -1).clamp(lo, hi)
    return shifted.round().to(torch.uint8) if pixels_u8 else shifted


def check_shift(data, pixels: int) -> None:
    if pixels and len(data.input_shape) != 3:
        raise ConfigError("--shift-pixels", pixels, "0 for data that are not images")
    if pixels and pixels >= data.input_shape[-1]:
        raise ConfigError("--shift-pixels", pixels, f"fewer than the image width, {data.input_shape[-1]}")


def markdown(rows: list[dict]) -> str:
    shifted = "shifted_test_accuracy" in rows[0]
    lines = [
        "| model | validation accuracy | test accuracy |" + (" shifted test accuracy |" if shifted else ""),
        "| --- | ---: | ---: |" + (" ---: |" if shifted else ""),
    ]
    for r in rows:
        line = f"| {r['model']} | {r['val_accuracy']:.4f} | {r['test_accuracy']:.4f} |"
        lines.append(line + (f" {r['shifted_test_accuracy']:.4f} |" if shifted else ""))
    return "\n".join(lines)


def load_ingredients(args: argparse.Namespace):
    """(paths, layout, stacked [K, P], base or None): every file read and checked."""
    import torch

    from .checkpoint import load_checkpoint

    paths = find_checkpoints(args.checkpoints)
    layout, first, _ = load_checkpoint(paths[0], "CHECKPOINT")
    models = [first]
    for p in paths[1:]:
        other_layout, params, _ = load_checkpoint(p, "CHECKPOINT")
        check_same_layout(paths[0], layout, p, other_layout)
        models.append(params)
    base = None
    if args.base is not None:
        base_layout, base, _ = load_checkpoint(Path(args.base), "--base")
        check_same_layout(paths[0], layout, Path(args.base), base_layout, "--base")
    return paths, layout, torch.stack(models), base


def run(args: argparse.Namespace) -> tuple[list[dict], Path]:
    """(the score table, where the merged checkpoint went)."""
    check_args(args)
    options = strategy_config(args.method, args.set, 0)  # names and types, before torch is even imported
    import torch

    from strategies import build_strategy

    strategy = build_strategy(options)  # the values (alpha in [0, 1], ...), before any file is read
    from .backends.device import DeviceMover, resolve_device

    mover = DeviceMover(resolve_device(args.device, "--device"))  # cuda without a GPU: refused before any file
    if strategy.name in NEEDS_BASE and args.base is None:
        raise ConfigError(
            "--base",
            None,
            f"a checkpoint for {strategy.name}",
            "It merges deltas from (or interpolates toward) a base model, e.g. the pre-trained one.",
        )
    paths, layout, stacked, base = load_ingredients(args)
    out = Path(args.out) if args.out else paths[0].parent / f"merged_{strategy.name}.safetensors"
    if out.is_dir():
        raise ConfigError("--out", str(out), "the path of a file", "An existing folder has that name.")
    exp = load_run(paths[0])
    from .threads import configure_for_experiment

    configure_for_experiment(exp)  # torch's threads as the run's: one for small models (sim/threads.py)
    if exp.layout != layout:
        check_same_layout(paths[0], exp.layout, paths[0], layout)
    check_shift(exp.data, args.shift_pixels)
    mover.upload_data(exp.data)  # once, in its storage dtype; merging and scoring then read the device copy
    mover.upload_model(exp.model)
    stacked = mover.to_device(stacked)
    base = None if base is None else mover.to_device(base)
    strategy = build_strategy(strategy_config(args.method, args.set, int(exp.cfg.seed)))
    if strategy.needs_validation and exp.validation_fn() is None:
        raise ConfigError(
            "--method",
            args.method,
            "a method that needs no validation split",
            "The run these checkpoints come from has no validation split (dataset.val_fraction=0).",
        )
    with torch.device(mover.device):  # a strategy's own torch.zeros(...) on the device too
        merged = merge(exp, strategy, layout, stacked, base, args.fisher_rows, paths)
    table = score_table(exp, layout, stacked, paths, base, args, (f"merge: {strategy.name}", merged))
    from .checkpoint import save_checkpoint

    save_checkpoint(
        out, layout, merged, {"merge_method": strategy.name, "ingredients": json.dumps([str(p) for p in paths])}
    )
    print(f"device {mover.device}: {mover.host_device_bytes} bytes moved between host and device", file=sys.stderr)
    return table, out


def merge(exp, strategy, layout, stacked, base, fisher_rows: int, paths: list[Path]):
    import torch

    from strategies import AggregationInfo

    from .fisher import diagonal_fisher

    reference = stacked.mean(0) if base is None else base
    extras = {}
    if "fisher" in strategy.requires:
        rows = exp.data.x[:fisher_rows]
        extras["fisher"] = torch.stack([diagonal_fisher(exp.model, layout, m, rows) for m in stacked])
    k = len(stacked)
    info = AggregationInfo(
        client_ids=torch.arange(k),
        num_samples=torch.ones(k, dtype=torch.long),
        round=1,
        num_clients=k,
        layout=layout,
        reference=reference,
        validate=exp.validation_fn(),
        extras=extras,
    )
    merged, state = strategy.aggregate(stacked, info, strategy.init_state(reference, k))
    if "kept" in state:  # greedy soup: say which ingredients made it in
        print(
            f"{strategy.name} kept {len(state['kept'])} of {k}: "
            + ", ".join(str(paths[int(i)]) for i in state["kept"]),
            file=sys.stderr,
        )
    return merged


def score_table(exp, layout, stacked, paths: list[Path], base, args, merged_row: tuple) -> list[dict]:
    """Accuracy of each ingredient, the base, the merge and the logit ensemble on each split."""
    from .training import evaluate

    data = exp.data
    sets = {"val_accuracy": (data.x_val, data.y_val), "test_accuracy": (data.x_test, data.y_test)}
    if args.shift_noise or args.shift_pixels:
        sets["shifted_test_accuracy"] = (shifted_test(data, args.shift_noise, args.shift_pixels), data.y_test)
    named = [(str(p), m) for p, m in zip(paths, stacked, strict=True)]
    if base is not None:
        named.append((f"base: {args.base}", base))
    named.append(merged_row)
    table = [
        {"model": name, **{k: evaluate(exp.model, layout, m, x, y)[0] for k, (x, y) in sets.items()}}
        for name, m in named
    ]
    table.append({"model": f"logit ensemble of {len(stacked)}", **ensemble_scores(exp, layout, stacked, sets)})
    return table


def ensemble_scores(exp, layout, stacked: torch.Tensor, sets: dict) -> dict[str, float]:
    """Accuracy of the average of the K models' predicted probabilities (K forward passes)."""
    import torch
    from torch.func import functional_call

    @torch.no_grad()
    def acc(x: torch.Tensor, y: torch.Tensor) -> float:
        if len(y) == 0:
            return float("nan")
        probs = sum(
            (torch.softmax(functional_call(exp.model, layout.to_state_dict(m), (x,)), -1) for m in stacked),
            torch.zeros((), device=x.device),
        )
        return float((probs.argmax(-1) == y).float().mean())

    return {k: acc(x, y) for k, (x, y) in sets.items()}


class _Parser(argparse.ArgumentParser):
    """Usage errors as one ``error: ...`` paragraph with exit code 2, like every other refusal."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m sim.merge", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="model.safetensors files or folders holding them")
    parser.add_argument("--method", default="uniform_soup", help="a strategy name from configs/strategy/")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a strategy option")
    parser.add_argument("--base", help="base checkpoint for interpolate / task_arithmetic / ties / dare")
    parser.add_argument(
        "--out",
        help="where to write the merged checkpoint "
        "(default: merged_<method>.safetensors in the first checkpoint's folder)",
    )
    parser.add_argument("--fisher-rows", type=int, default=1000, help="training rows for Fisher diagonals")
    parser.add_argument("--shift-noise", type=float, default=0.0, help="std of Gaussian noise for a shifted test set")
    parser.add_argument("--shift-pixels", type=int, default=0, help="pixels to move test images for a shifted test set")
    parser.add_argument("--csv", help="also write the table as CSV here")
    parser.add_argument(
        "--device", default="auto", help="where to merge and score: auto (cuda if there is one), cpu, cuda, cuda:N"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        table, out = run(args)
    except GossipsoupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(markdown(table))
    print(f"wrote the merged model to {out}", file=sys.stderr)
    if args.csv:
        import pandas as pd

        from .results import atomic_write_text

        atomic_write_text(Path(args.csv), pd.DataFrame(table).to_csv(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
