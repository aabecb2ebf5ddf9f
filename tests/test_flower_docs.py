"""docs/flower.md as a user reads it: its app snippets run as pasted, and its table of config names is true.

The code blocks marked ``<!-- flower-doc-app: NAME ... -->`` are concatenated per NAME, in document
order, and run as one script each, one after the other in one child process (Flower's ``run_simulation``
starts and stops its own Ray; tests/flower_runs.py, which runs test_flower_simulation.py's script in the same child).
A run must end cleanly with no traceback anywhere in its output (Flower logs a failed evaluate message as a traceback
but still exits 0) and report the server-side accuracy every round.
"""

import glob
import re
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from flower_runs import DOC, ROOT, doc_apps, flower_parts  # noqa: E402


def test_the_doc_has_both_apps_and_each_is_whole():
    apps = doc_apps()
    assert sorted(apps) == ["legacy", "message"]
    for code in apps.values():
        compile(code, "app.py", "exec")  # one valid file
        assert "run_simulation(" in code and 'if __name__ == "__main__":' in code


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_the_docs_flower_apps_run_quietly_and_report_accuracy():
    apps = doc_apps()
    parts = {name: part for name, part in flower_parts().items() if name in apps}
    assert sorted(parts) == sorted(apps) == ["legacy", "message"]
    for name, (code, part) in parts.items():
        assert code == 0, (name, part[-5000:])
        assert "Traceback" not in part and "No evaluate function registered" not in part, (name, part[-5000:])
        assert len(part.splitlines()) < 150, f"{name}: {len(part.splitlines())} lines of log:\n{part[-3000:]}"
        accuracy = {int(r): float(a) for r, a in re.findall(r"^round (\d+): accuracy ([0-9.]+)$", part, re.M)}
        assert sorted(accuracy) == [0, 1, 2, 3], (name, part[-3000:])
        # 10 classes: the start is near 0.1, trained clearly above
        assert accuracy[3] > accuracy[0] + 0.2, (name, accuracy)


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
