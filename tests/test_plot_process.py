"""accuracy.png by the helper process of a command-line run (sim/plot_process.py): the same bytes as drawn in-process,
the parent's own drawing whenever the helper cannot, and no helper left once the figure is written or the run ends.

Each check runs in a process forked from the tests' server (tests/forked_cli.py): the helper is itself forked, and
forking the pytest process (xdist's threads) would not be safe.
"""

import json
from pathlib import Path

from forked_cli import run_script

SCRIPT = r"""
import json, os, signal, sys, time
from pathlib import Path
from sim import plot_process
from sim.results import plot_accuracy, write_accuracy_png

ROWS = [{"round": 0, "test_accuracy": 0.1, "train_loss": float("nan")},
        {"round": 1, "test_accuracy": 0.4, "train_loss": 2.0}, {"round": 2, "test_accuracy": 0.7, "train_loss": 1.1},
        {"round": 3, "test_accuracy": float("nan"), "train_loss": 0.9}, {"round": 4, "test_accuracy": 0.9}]
out, report = Path(sys.argv[1]), {}
TITLE = "fedavg, FL, mlp, digits, 20 clients, seed 0"

def alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"

write_accuracy_png(out / "reference.png", ROWS, TITLE)

# the helper draws it: same bytes, and it is gone afterwards
plot_process.start()
pid = plot_process._HELPER[0]
os.kill(pid, signal.SIGINT)  # Ctrl-C reaches the whole process group: the helper ignores it
os.kill(pid, signal.SIGTERM)
time.sleep(0.2)
report["alive_after_signals"] = alive(pid)
(out / "sub").mkdir()
os.chdir(out / "sub")  # after the fork: a relative path is the caller's, not the helper's working directory
report["helper_wrote"] = plot_process.plot(Path("helper.png"), ROWS, TITLE, "round")
os.chdir(out)
report["helper_gone"] = not alive(pid) and plot_process._HELPER is None

# a helper that died: plot says so and plot_accuracy draws the figure here
plot_process.start()
pid = plot_process._HELPER[0]
os.kill(pid, signal.SIGKILL)
os.waitpid(pid, 0)
report["dead_helper_wrote"] = plot_process.plot(out / "unused.png", ROWS, "t", "round")
report["unused_exists"] = (out / "unused.png").exists()
plot_process.start()
os.kill(plot_process._HELPER[0], signal.SIGKILL)
plot_accuracy(out / "fallback.png", ROWS, TITLE)

# a helper that fails (the folder is a file): the parent tries itself and its error is the caller's
plot_process.start()
(out / "blocker").write_text("")
try:
    plot_accuracy(out / "blocker" / "accuracy.png", ROWS, "t")
    report["failure"] = None
except OSError as exc:
    report["failure"] = type(exc).__name__

# a helper that hangs (stopped) takes no request larger than the pipe's buffer and sends no reply: plot gives up at
# the deadline, kills it, and the caller draws the figure
plot_process.REPLY_TIMEOUT_S = 0.5
for big in (False, True):
    plot_process.start()
    pid = plot_process._HELPER[0]
    os.kill(pid, signal.SIGSTOP)
    rows = [{"round": r, "test_accuracy": 0.5, "train_loss": 1.0} for r in range(5000 if big else 5)]
    report[f"hung_helper_wrote_{big}"] = plot_process.plot(out / "hung.png", rows, "t", "round")
    report[f"hung_helper_gone_{big}"] = not alive(pid) and plot_process._HELPER is None
plot_process.REPLY_TIMEOUT_S = 60.0
# a healthy helper still warming up takes a request larger than the pipe's buffer (the parent waits for room)
plot_process.start()
report["big_request_wrote"] = plot_process.plot(out / "big.png", rows, "t", "round")

# a helper nobody asks: stop() (at exit) ends it
plot_process.start()
pid = plot_process._HELPER[0]
plot_process.stop()
report["stopped_gone"] = not alive(pid)
print(json.dumps(report))
"""


def test_the_helper_writes_the_same_png_and_the_parent_draws_it_when_the_helper_cannot(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    proc = run_script(script, [str(tmp_path)], Path(__file__).resolve().parents[1], timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    reference = (tmp_path / "reference.png").read_bytes()
    assert reference[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["alive_after_signals"] and report["helper_wrote"] and report["helper_gone"]
    assert (tmp_path / "sub" / "helper.png").read_bytes() == reference
    assert report["dead_helper_wrote"] is False and not report["unused_exists"]
    assert (tmp_path / "fallback.png").read_bytes() == reference
    assert report["failure"] in ("NotADirectoryError", "FileExistsError")
    assert report["stopped_gone"]
    for big in ("False", "True"):
        assert report[f"hung_helper_wrote_{big}"] is False and report[f"hung_helper_gone_{big}"], big
    assert not (tmp_path / "hung.png").exists()
    assert report["big_request_wrote"] and (tmp_path / "big.png").exists()
    assert not list(tmp_path.glob("**/.*.tmp"))  # no half-written file left by either process
