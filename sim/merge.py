"""``python -m sim.merge``: merge saved checkpoints with any strategy and score every ingredient.

The ingredients are ``model.safetensors`` files (paths, or folders such as a multirun, searched
recursively). The data to score them on is rebuilt from the ``summary.json`` beside the first
checkpoint (its resolved config: dataset, partition, seed), so a sweep's models are scored on the
validation and test splits they were trained against. The table has one row per ingredient, the
merge, and the logit ensemble of all ingredients (K times the inference cost) for comparison.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import yaml
from omegaconf import OmegaConf

from strategies import AggregationInfo, build_strategy

from .checkpoint import load_checkpoint, save_checkpoint
from .errors import ConfigError, GossipsoupError
from .fisher import diagonal_fisher
from .training import evaluate

NEEDS_BASE = ("interpolate", "task_arithmetic", "ties", "dare")


def find_checkpoints(paths: list[str]) -> list[Path]:
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(p.rglob("model.safetensors"))
        elif p.exists():
            found.append(p)
        else:
            raise ConfigError("CHECKPOINT", str(p), "an existing .safetensors file or a folder holding model.safetensors")
    if len(found) < 2:
        raise ConfigError("CHECKPOINT", " ".join(paths), "at least two checkpoints to merge",
                          f"Found {len(found)}.")
    return found


def check_same_layout(first: Path, layout, other: Path, other_layout) -> None:
    if other_layout == layout:
        return
    for a, b in zip(layout.specs, other_layout.specs):
        if a.name != b.name or a.shape != b.shape:
            raise ConfigError("CHECKPOINT", str(other), f"a checkpoint with the layout of {first}",
                              f"The first mismatched tensor is {a.name} {list(a.shape)} against "
                              f"{b.name} {list(b.shape)}.")
    raise ConfigError("CHECKPOINT", str(other), f"a checkpoint with the layout of {first}",
                      f"It has {len(other_layout)} tensors, the first has {len(layout)}.")


def strategy_config(method: str, settings: list[str], seed: int) -> dict:
    import configs

    path = Path(configs.__file__).parent / "strategy" / f"{method}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError("--method", method, f"one of {', '.join(names)}")
    cfg = OmegaConf.create({"seed": seed, "strategy": OmegaConf.load(path)})
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or key not in cfg.strategy:
            raise ConfigError("--set", item, f"KEY=VALUE with KEY one of {', '.join(k for k in cfg.strategy)}")
        cfg.strategy[key] = yaml.safe_load(value)
    return OmegaConf.to_container(cfg, resolve=True)["strategy"]


def load_run(checkpoint: Path):
    """The experiment (data, model) a checkpoint was trained in, from its run's summary.json."""
    from .experiment import build_experiment

    summary = checkpoint.parent / "summary.json"
    if not summary.is_file():
        raise ConfigError("CHECKPOINT", str(checkpoint), "a checkpoint inside its run folder (beside summary.json)",
                          "The data to score on is rebuilt from that run's config.")
    cfg = OmegaConf.create(json.loads(summary.read_text())["config"])
    return build_experiment(cfg)


def shifted_test(data, noise: float, pixels: int) -> torch.Tensor:
    """The test inputs under a distribution shift: images moved ``pixels`` to the right (zeros
    enter on the left) plus Gaussian noise of std ``noise`` (a fixed stream), clipped to the
    training range."""
    x = data.x_test.reshape(-1, *data.input_shape).clone()
    if pixels:
        if len(data.input_shape) != 3:
            raise ConfigError("--shift-pixels", pixels, "0 for data that are not images")
        x = torch.roll(x, shifts=pixels, dims=-1)
        x[..., :pixels] = 0.0
    if noise:
        x = x + noise * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    lo, hi = float(data.x.min()), float(data.x.max())
    return x.reshape(len(x), -1).clamp(lo, hi)


def markdown(rows: list[dict]) -> str:
    shifted = "shifted_test_accuracy" in rows[0]
    lines = ["| model | validation accuracy | test accuracy |" + (" shifted test accuracy |" if shifted else ""),
             "| --- | ---: | ---: |" + (" ---: |" if shifted else "")]
    for r in rows:
        line = f"| {r['model']} | {r['val_accuracy']:.4f} | {r['test_accuracy']:.4f} |"
        lines.append(line + (f" {r['shifted_test_accuracy']:.4f} |" if shifted else ""))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> list[dict]:
    paths = find_checkpoints(args.checkpoints)
    layout, first, _ = load_checkpoint(paths[0])
    models = [first]
    for p in paths[1:]:
        other_layout, params, _ = load_checkpoint(p)
        check_same_layout(paths[0], layout, p, other_layout)
        models.append(params)
    stacked = torch.stack(models)
    exp = load_run(paths[0])
    if exp.layout != layout:
        check_same_layout(paths[0], exp.layout, paths[0], layout)
    strategy = build_strategy(strategy_config(args.method, args.set, int(exp.cfg.seed)))
    if strategy.name in NEEDS_BASE and args.base is None:
        raise ConfigError("--base", None, f"a checkpoint for {strategy.name}",
                          "It merges deltas from (or interpolates toward) a base model, e.g. the pre-trained one.")
    reference = stacked.mean(0)
    if args.base is not None:
        base_layout, reference, _ = load_checkpoint(Path(args.base))
        check_same_layout(paths[0], layout, Path(args.base), base_layout)
    data = exp.data
    extras = {}
    if "fisher" in strategy.requires:
        rows = data.x[: args.fisher_rows]
        extras["fisher"] = torch.stack([diagonal_fisher(exp.model, layout, m, rows) for m in models])
    info = AggregationInfo(client_ids=torch.arange(len(models)), num_samples=torch.ones(len(models), dtype=torch.long),
                           round=1, num_clients=len(models), layout=layout, reference=reference,
                           validate=exp.validation_fn(), extras=extras)
    if strategy.needs_validation and info.validate is None:
        raise ConfigError("--method", args.method, "a method that needs no validation split",
                          "The run these checkpoints come from has no validation split (dataset.val_fraction=0).")
    merged, state = strategy.aggregate(stacked, info, strategy.init_state(reference, len(models)))
    if "kept" in state:  # greedy soup: say which ingredients made it in
        print(f"{strategy.name} kept {len(state['kept'])} of {len(models)}: "
              + ", ".join(str(paths[int(k)]) for k in state["kept"]), file=sys.stderr)

    sets = {"val_accuracy": (data.x_val, data.y_val), "test_accuracy": (data.x_test, data.y_test)}
    if args.shift_noise or args.shift_pixels:
        sets["shifted_test_accuracy"] = (shifted_test(data, args.shift_noise, args.shift_pixels), data.y_test)
    named = [(str(p), m) for p, m in zip(paths, models)] + [(f"merge: {strategy.name}", merged)]
    table = [{"model": name, **{k: evaluate(exp.model, layout, m, x, y)[0] for k, (x, y) in sets.items()}}
             for name, m in named]
    table.append({"model": f"logit ensemble of {len(models)}", **ensemble_scores(exp, layout, stacked, sets)})
    save_checkpoint(Path(args.out), layout, merged, {"merge_method": strategy.name,
                                                     "ingredients": json.dumps([str(p) for p in paths])})
    return table


@torch.no_grad()
def ensemble_scores(exp, layout, stacked: torch.Tensor, sets: dict) -> dict[str, float]:
    """Accuracy of the average of the K models' predicted probabilities (K forward passes)."""
    from torch.func import functional_call

    def acc(x: torch.Tensor, y: torch.Tensor) -> float:
        if len(y) == 0:
            return float("nan")
        probs = sum(torch.softmax(functional_call(exp.model, layout.to_state_dict(m), (x,)), -1) for m in stacked)
        return float((probs.argmax(-1) == y).float().mean())

    return {k: acc(x, y) for k, (x, y) in sets.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.merge", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="model.safetensors files or folders holding them")
    parser.add_argument("--method", default="uniform_soup", help="a strategy name from configs/strategy/")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a strategy option")
    parser.add_argument("--base", help="base checkpoint for interpolate / task_arithmetic / ties / dare")
    parser.add_argument("--out", default="merged.safetensors", help="where to write the merged checkpoint")
    parser.add_argument("--fisher-rows", type=int, default=1000, help="training rows for Fisher diagonals")
    parser.add_argument("--shift-noise", type=float, default=0.0, help="std of Gaussian noise for a shifted test set")
    parser.add_argument("--shift-pixels", type=int, default=0, help="pixels to move test images for a shifted test set")
    parser.add_argument("--csv", help="also write the table as CSV here")
    args = parser.parse_args(argv)
    try:
        table = run(args)
    except GossipsoupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(markdown(table))
    if args.csv:
        import pandas as pd

        from .results import atomic_write_text

        atomic_write_text(Path(args.csv), pd.DataFrame(table).to_csv(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
