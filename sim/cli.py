"""``python -m sim``: Hydra's command line, with every config value checked before any job starts.

Hydra alone would report an unknown option (``strategy=fedavx``) as a composition error with exit
code 1, and would find a bad value (``rounds=0``) only inside the job, after creating its output
folder. A preflight therefore composes the config for every value that a sweep names (each value
once, not the full product) and validates it; any problem is one paragraph on stderr, exit code 2,
and nothing is written.
"""

from __future__ import annotations

import logging
import re
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.types import Override
from hydra.types import RunMode
from omegaconf import DictConfig

from .errors import ConfigError, GossipsoupError, RunInterrupted
from .schema import CONFIG_MODULE, check_keys, group_options
from .sweep_stop import in_sweep, run_command, sweep_job
from .validation import choice

CONFIG_NAME = "config"
TASK_NAME = "cli"  # the job name hydra.main gives this module's task (the config sets hydra.job.name anyway)
# flags of Hydra that ask for information or pick other config files: no preflight then
_SKIP_FLAGS = {
    "--help",
    "-h",
    "--hydra-help",
    "--info",
    "-i",
    "--cfg",
    "-c",
    "--resolve",
    "--config-path",
    "-cp",
    "--config-dir",
    "-cd",
    "--shell-completion",
    "-sc",
    "--version",
}


def _input_line(ov: Override) -> str:
    """The override as the user wrote it; Hydra types it Optional, but its parser always fills it in."""
    if ov.input_line is None:
        raise AssertionError(f"Hydra parsed an override without its text: {ov}")
    return ov.input_line


def _override_variants(args: list[str]) -> list[list[str]]:
    """Override lists to compose: the plain ones plus, for each sweep, each of its values in turn."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(args)
    groups = group_options()
    base, sweeps = [], []
    for ov in parsed:
        key = ov.key_or_group
        if key == "hydra" or key.startswith("hydra.") or key.startswith("hydra/"):
            continue
        if ov.is_sweep_override():
            try:
                values = list(ov.sweep_string_iterator())
            except Exception:  # interval sweeps have no finite list of values
                values = []
            sweeps.append((ov, values))
        else:
            base.append(_input_line(ov))
        for value in values if ov.is_sweep_override() else [ov.value()]:
            if key in groups and isinstance(value, str) and value not in groups[key]:
                choice(key, value, groups[key], f"(The {key} options are the files in configs/{key}/.)")
    variants = [base]
    for ov, values in sweeps:
        prefix = "+" if ov.is_add() else ("++" if ov.is_force_add() else "")
        for value in values:
            variants.append(base + [f"{prefix}{ov.key_or_group}={value}"])
    return variants


def preflight(argv: list[str]) -> DictConfig | None:
    """Compose and validate the config of every value a command line names; ConfigError if any fails.

    Returns the composed config (Hydra's part included) when the command is one plain run, for
    :func:`run_single` to run without composing it again; None for a sweep, a Hydra flag, or a
    command whose Hydra options only Hydra itself can report on.
    """
    from hydra import initialize_config_module

    from .experiment import validate_config

    config_name, args, skip = CONFIG_NAME, [], False
    it = iter(argv)
    for arg in it:
        if arg in ("--config-name", "-cn"):
            config_name = next(it, CONFIG_NAME)
        elif arg.startswith("--config-name="):
            config_name = arg.split("=", 1)[1]
        elif arg.split("=", 1)[0] in _SKIP_FLAGS:
            skip = True
        elif arg in ("--multirun", "-m"):
            continue
        elif arg.startswith("-"):
            skip = True
        else:
            args.append(arg)
    if skip:
        return None
    from hydra.errors import HydraException

    from .sweeps import check_plugins, check_ray_address, search_space_values

    check_plugins(args)  # a launcher or sweeper that is not installed: named with the extra to install
    space = search_space_values(args)  # an Optuna search space's bounds and choices, each checked as a value
    try:
        variants = _override_variants(args)
    except HydraException as exc:  # a malformed override
        _raise_hydra_error(" ".join(str(exc).split()), args)
    variants += [variants[0] + [value] for value in space]
    plain = None
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3", job_name=TASK_NAME):
        if len(variants) == 1 and not _multirun(argv, args):
            plain = _compose_plain_run(config_name, args)
        for overrides in variants:
            validate_config(plain if plain is not None else _compose(config_name, overrides))
    check_ray_address(args)  # after the values: a typo in the command is named before a network wait
    return plain


def _multirun(argv: list[str], args: list[str]) -> bool:
    return "--multirun" in argv or "-m" in argv or any(a.split("=", 1)[0] == "hydra.mode" for a in args)


def _compose_plain_run(config_name: str, args: list[str]) -> DictConfig | None:
    """One run's config as Hydra's ``run`` composes it (with the ``hydra.mode=RUN`` that Hydra adds).

    Composing costs about 0.4 s and Hydra's command line composes twice more (once to find the mode,
    once to run); reusing this one saves both. None where composition fails: the usual path then
    reports the error (a gossipsoup key as one paragraph, a Hydra key as Hydra does).
    """
    from hydra import compose
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = compose(config_name=config_name, overrides=args, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException):
        return None
    if cfg.hydra.mode is not None:  # a config that picks its mode itself: Hydra's command line decides
        return None
    cfg.hydra.mode = RunMode.RUN  # what Hydra's command line adds to a run that names no mode
    cfg.hydra.overrides.hydra.append("hydra.mode=RUN")
    return cfg


def run_single(cfg: DictConfig) -> None:
    """Run one job from its composed config through Hydra's own job runner, as ``hydra.main`` would.

    The same steps as Hydra's ``run`` after its composition: Hydra's logging, the config's callbacks,
    ``run_job`` (output folder, .hydra/ files, job logging, HydraConfig) and the job's error re-raised.
    """
    from hydra import initialize_config_module
    from hydra._internal.callbacks import Callbacks
    from hydra._internal.utils import run_and_report
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.utils import configure_log, run_job
    from hydra.types import HydraContext

    config_name = str(cfg.hydra.job.config_name)

    def run() -> None:
        configure_log(cfg.hydra.hydra_logging, cfg.hydra.verbose)
        callbacks = Callbacks(cfg)
        callbacks.on_run_start(config=cfg, config_name=config_name)
        context = HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=callbacks)
        ret = run_job(
            hydra_context=context,
            task_function=hydra_main,
            config=cfg,
            job_dir_key="hydra.run.dir",
            job_subdir_key=None,
            configure_logging=True,
        )
        callbacks.on_run_end(config=cfg, config_name=config_name, job_return=ret)
        _ = ret.return_value  # the job's exception, raised here as Hydra's run does

    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3", job_name=TASK_NAME):
        run_and_report(run)


def _compose(config_name: str, overrides: list[str]):
    """The config Hydra would run, with Hydra's record of the chosen options (the key schema needs them).

    Hydra refuses ``key=value`` for a key that does not exist and suggests adding it with ``+key``;
    that advice is wrong here (nothing would read the key), so such a key is put into the config
    and reported by the same schema check as ``+key=value``, with the closest existing key.
    """
    from hydra import compose
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    unknown: list[tuple[str, object]] = []
    remaining = list(overrides)
    while True:
        try:
            cfg = compose(config_name=config_name, overrides=remaining, return_hydra_config=True)
            break
        except (HydraException, OmegaConfBaseException) as exc:
            message = " ".join(str(exc).split())
            named = re.match(r"Could not override '([^']+)'", message)
            parsed = OverridesParser.create().parse_overrides(remaining)
            bad = [ov for ov in parsed if named and ov.key_or_group == named.group(1)]
            if not bad:
                _raise_hydra_error(message, remaining)
            unknown.append((bad[0].key_or_group, bad[0].value()))
            remaining = [_input_line(ov) for ov in parsed if ov.key_or_group != bad[0].key_or_group]
    if unknown:
        key, value = unknown[0]
        try:
            with open_dict(cfg):
                OmegaConf.update(cfg, key, value, force_add=True)
        except (OmegaConfBaseException, ValueError):
            raise ConfigError(
                key, value, "an existing config key (see python -m sim --cfg job)", "No config file has this key."
            ) from None
        check_keys(cfg)
        raise ConfigError(key, value, "an existing config key (see python -m sim --cfg job)")
    return cfg


def _raise_hydra_error(message: str, args: list[str]) -> None:
    """Any other composition error as one ConfigError, without Hydra's advice to append keys with ``+``."""
    message = re.sub(r"To append to your config use \+\S+", "", message).strip()
    named = re.search(r"(?:override|Key) '([^']+)'", message)
    field = named.group(1).split("=", 1)[0].lstrip("+~") if named else "command line"  # a parse error names key=value
    value = next(
        (a.split("=", 1)[1] for a in args if a.lstrip("+~").split("=", 1)[0] == field and "=" in a), " ".join(args)
    )
    allowed = "an existing config key or option (see python -m sim --cfg job)"
    if message.startswith("Error parsing override"):
        allowed = "a value in Hydra's override grammar (quote one with special characters: key='value')"
    raise ConfigError(field, value, allowed, message) from None


def _discard_output_dir(out_dir: Path) -> None:
    """Remove a run folder that holds nothing but Hydra's bookkeeping (the run never started)."""
    if not out_dir.is_dir():
        return
    leftovers = [p for p in out_dir.iterdir() if p.name != ".hydra" and p.suffix != ".log"]
    if not leftovers:
        shutil.rmtree(out_dir, ignore_errors=True)


@hydra.main(version_base="1.3", config_path="pkg://configs", config_name=CONFIG_NAME)
@sweep_job
def hydra_main(cfg: DictConfig) -> float:
    from .run import run_experiment

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    hydra_dir = out_dir
    try:
        resume_state = None
        if cfg.get("resume") is True:
            cfg, resume_state, finished = _resumed_own_folder(cfg, out_dir)
            if finished is not None:
                _discard_output_dir(hydra_dir)
                return _objective(finished)
        elif cfg.get("resume"):
            cfg, resume_state = _resumed(cfg, Path(str(cfg.resume)).expanduser().resolve())
        if resume_state is not None:
            out_dir = Path(str(resume_state["run_dir"]))
            if out_dir.resolve() != hydra_dir.resolve():
                _discard_output_dir(hydra_dir)  # the run continues in its own folder
        summary = run_experiment(cfg, out_dir, resume_state=resume_state)
    except RunInterrupted as exc:
        if in_sweep():
            raise  # the sweep's launcher says once how to resume the whole sweep (sim/sweep_stop.py)
        print(str(exc), file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    except GossipsoupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if isinstance(exc, ConfigError):
            _discard_output_dir(hydra_dir)
        raise SystemExit(exc.exit_code) from None
    return _objective(summary)


def _objective(summary: dict) -> float:
    """What a sweeper (Optuna) maximises: validation accuracy where there is a validation split.

    Tuning on test accuracy would report a test number chosen by the test set; the report then gives
    each strategy's test accuracy at its best validation setting.
    """
    final = summary["final"]
    return float(final.get("val_accuracy", final["test_accuracy"]))


def _resumed(cfg: DictConfig, run_dir: Path) -> tuple[DictConfig, dict]:
    """The saved run's config (with a longer ``rounds`` if asked) and its latest checkpoint."""
    from omegaconf import OmegaConf

    from .experiment import validate_config
    from .resume import read_checkpoint, resumed_config
    from .schema import config_dict

    state = read_checkpoint(run_dir)
    overridden = [o.split("=", 1)[0] for o in HydraConfig.get().overrides.task if "=" in o]
    given = config_dict(cfg)
    merged = resumed_config(state["config"], given, overridden, state["round"])  # async gossip: a float
    resumed = OmegaConf.create(merged)
    validate_config(resumed)
    state["run_dir"] = str(run_dir)
    return resumed, state


def _resumed_own_folder(cfg: DictConfig, out_dir: Path) -> tuple[DictConfig, dict | None, dict | None]:
    """``resume=true``: skip this job if an earlier launch completed it, continue it if that left a checkpoint.

    Returns ``(config, resume_state, finished)``: ``finished`` is the completed run's summary
    (nothing to do); ``resume_state`` None with nothing finished means a fresh start in ``out_dir``.
    """
    from omegaconf import OmegaConf

    from .resume import resumed_config
    from .resume_folder import completed_summary, earlier_run_folder, has_checkpoint
    from .schema import config_dict

    hydra_cfg = HydraConfig.get()
    raw = OmegaConf.to_container(hydra_cfg.sweep if hydra_cfg.mode == RunMode.MULTIRUN else hydra_cfg.run)
    pattern = str(raw["dir"]) if isinstance(raw, dict) else ""  # unresolved: ${now:...} marks where launches differ
    earlier = earlier_run_folder(out_dir, pattern, list(hydra_cfg.overrides.task))
    if earlier is None or (completed_summary(earlier) is None and not has_checkpoint(earlier)):
        cfg.resume = None  # an instruction, not a setting: the run records the config it would have without it
        return cfg, None, None
    summary = completed_summary(earlier)
    if summary is not None and summary.get("config", {}).get("rounds") == cfg.rounds:
        overridden = [o.split("=", 1)[0] for o in hydra_cfg.overrides.task if "=" in o]
        resumed_config(summary["config"], config_dict(cfg), overridden, int(cfg.rounds))  # refuses other changes
        logging.getLogger("sim").info("%s: completed by an earlier launch; skipped", earlier)
        return cfg, None, summary
    resumed, state = _resumed(cfg, earlier)
    logging.getLogger("sim").info("%s: resumed after round %d", earlier, int(state["round"]))
    return resumed, state, None


def main() -> None:
    logging.getLogger("sim").setLevel(logging.INFO)
    try:
        plain = preflight(sys.argv[1:])
    except GossipsoupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    if plain is not None:
        from . import plot_process

        plot_process.start()  # imports matplotlib for accuracy.png on the other core while the run trains
        run_single(plain)
        return
    run_command(hydra_main, sys.argv)
