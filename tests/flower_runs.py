"""One child process for the tests' Flower simulations: docs/flower.md's two apps, then the adapter's simulation.

Each script runs as ``python SCRIPT`` would (``runpy`` with ``__name__ == "__main__"``), one after the other, and each
``run_simulation`` still starts and stops its own Ray; only the interpreter, with its torch, flwr and Ray imports (about
5 CPU s), is shared. A marker line opens each script's part of the log and another gives its outcome, so a script that
fails is reported as that script's failure and the next one still runs. The result is computed once per pytest process
(tests/test_flower_docs.py and tests/test_flower_simulation.py both read it; both are in the xdist group "ray").
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "flower.md"
_BLOCK = re.compile(r"<!-- flower-doc-app: ([\w ]+) -->\n```python\n(.*?)```", re.S)

_RUNNER = """
import runpy, sys, traceback
for path in sys.argv[1:]:
    print(f"=== script {path}", flush=True)
    code = 0
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except Exception:
        traceback.print_exc()
        code = 1
    sys.stdout.flush(); sys.stderr.flush()
    print(f"=== exit {code}", flush=True)
"""


def doc_apps() -> dict[str, str]:
    """Each app name of the doc's markers and the code of its blocks, concatenated in document order."""
    apps: dict[str, list[str]] = {}
    for names, code in _BLOCK.findall(DOC.read_text()):
        for name in names.split():
            apps.setdefault(name, []).append(code)
    return {name: "\n\n".join(blocks) for name, blocks in apps.items()}


@functools.cache
def flower_parts() -> dict[str, tuple[int, str]]:
    """``script name -> (exit code, its part of the log)`` for the doc's apps and the adapter simulation."""
    from test_flower_simulation import SCRIPT  # the simulation test's script (no cycle: that module imports us lazily)

    tmp = Path(tempfile.mkdtemp(prefix="flower_runs"))
    scripts = {**doc_apps(), "flower_sim": SCRIPT}
    for name, code in scripts.items():
        (tmp / f"{name}.py").write_text(code)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER, *(f"{name}.py" for name in scripts)],
        cwd=tmp,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    parts = re.findall(r"^=== script (\w+)\.py\n(.*?)^=== exit (-?\d+)$", proc.stdout, re.M | re.S)
    found = {name: (int(code), log) for name, log, code in parts}
    for name in scripts:  # a script that never reported (the interpreter died): the whole log, as a failure
        found.setdefault(name, (proc.returncode or 1, proc.stdout[-5000:]))
    return found
