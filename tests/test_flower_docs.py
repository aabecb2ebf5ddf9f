"""docs/flower.md as a user reads it: its app snippets run as pasted, and its table of config names is true.

The code blocks marked ``<!-- flower-doc-app: NAME ... -->`` are concatenated per NAME, in document
order, and run as one script each in a child process (Flower's ``run_simulation`` starts and stops its
own Ray). A run must end cleanly with no traceback anywhere in its output (Flower logs a failed
evaluate message as a traceback but still exits 0) and report the server-side accuracy every round.
"""

import glob
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "flower.md"
_BLOCK = re.compile(r"<!-- flower-doc-app: ([\w ]+) -->\n```python\n(.*?)```", re.S)


def doc_apps() -> dict[str, str]:
    """Each app name of the markers and the code of its blocks, concatenated in document order."""
    apps: dict[str, list[str]] = {}
    for names, code in _BLOCK.findall(DOC.read_text()):
        for name in names.split():
            apps.setdefault(name, []).append(code)
    return {name: "\n\n".join(blocks) for name, blocks in apps.items()}


def test_the_doc_has_both_apps_and_each_is_whole():
    apps = doc_apps()
    assert sorted(apps) == ["legacy", "message"]
    for code in apps.values():
        compile(code, "app.py", "exec")  # one valid file
        assert "run_simulation(" in code and 'if __name__ == "__main__":' in code


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
@pytest.mark.parametrize("app", ["message", "legacy"])
def test_the_docs_flower_app_runs_quietly_and_reports_accuracy(app, tmp_path):
    script = tmp_path / "app.py"
    script.write_text(doc_apps()[app])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    assert "Traceback" not in log and "No evaluate function registered" not in log, log[-5000:]
    assert len(log.splitlines()) < 150, f"{len(log.splitlines())} lines of log:\n{log[-3000:]}"
    accuracy = {int(r): float(a) for r, a in re.findall(r"^round (\d+): accuracy ([0-9.]+)$", proc.stdout, re.M)}
    assert sorted(accuracy) == [0, 1, 2, 3], proc.stdout[-3000:]
    assert accuracy[3] > accuracy[0] + 0.2, accuracy  # 10 classes: the start is near 0.1, trained clearly above


def _table() -> dict[str, tuple[str, str, str]]:
    """``config name -> (class, settings, adapter column)`` from the doc's table."""
    text = DOC.read_text()
    section = text[text.index("## Config names and classes") :]
    section = section[: section.index("\n## ")]
    rows = re.findall(r"^\| `(\w+)` \| `(\w+)` \| ([^|]*) \| (.*) \|$", section, re.M)
    return {name: (cls, settings.strip().strip("`"), adapter) for name, cls, settings, adapter in rows}


def _one_round(strategy) -> bool:
    """Whether the adapter's aggregation takes five replies for this rule (extras sent as a client would)."""
    from sim.errors import ConfigError, RunError
    from sim.layout import Layout
    from strategies.flower import ClientUpdate, ReplyAggregator

    layout = Layout.from_module(torch.nn.Linear(2, 2))

    def arrays(value: float) -> dict[str, np.ndarray]:
        return {s.name: np.full(s.shape, value, dtype=np.float32) for s in layout}

    try:
        agg = ReplyAggregator(strategy, layout, validate=lambda p: 0.0, initial_params=torch.zeros(layout.size))
        extras = {r: ({"value": 1.0} if r == "start_loss" else arrays(1.0)) for r in strategy.requires}
        agg.aggregate(1, [ClientUpdate(node, arrays(float(node)), 10, extras) for node in range(5)])
    except (ConfigError, RunError):
        return False
    return True


def test_the_table_maps_every_config_name_to_its_class(make_cfg):
    from strategies.base import build_strategy

    table = _table()
    names = sorted(Path(f).stem for f in glob.glob(str(ROOT / "configs" / "strategy" / "*.yaml")))
    assert sorted(table) == names
    for name in names:
        cfg = make_cfg(f"strategy={name}").strategy
        cls, settings, adapter = table[name]
        assert cfg["_target_"].rsplit(".", 1)[1] == cls, name
        if settings:
            key, value = settings.split("=")
            assert str(cfg[key]).replace("None", "null") == value, (name, settings)
        runs = _one_round(build_strategy(cfg))
        assert adapter.startswith("yes") == runs, (name, adapter)
