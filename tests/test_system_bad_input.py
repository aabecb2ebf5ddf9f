"""Bad system settings and traces are refused before any work: exit 2, one paragraph naming field, file and line."""

from __future__ import annotations

import json
import pickle

import pytest
from forked_cli import run_module

from sim.errors import ConfigError
from sim.experiment import build_experiment

BASE = ["num_clients=4", "participation.clients_per_round=2", "rounds=1", "model.hidden=[4]", "progress=false"]


def refuse(tmp_path, args, *needles, module="sim"):
    """A real process: exit 2, one ``error:`` paragraph with every needle, no traceback, no result file."""
    proc = run_module(module, args if module != "sim" else [*BASE, *args], tmp_path)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert proc.stderr.startswith("error: ")
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)
    assert not (tmp_path / "out" / "metrics.csv").exists()
    return proc.stderr


def refuse_in_process(make_cfg, args, *needles):
    """The same refusal without a process (the checks ``python -m sim`` runs before any work): cheaper."""
    base = [a for a in BASE if not any(x.startswith("participation=") for x in args) or "participation." not in a]
    with pytest.raises(ConfigError) as info:
        build_experiment(make_cfg(*base, *args))
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))
    return str(info.value)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["system=constant", "system.compute_s=-1"], ["system.compute_s=-1", "> 0"]),
        (["system=constant", "system.bandwidth_up=inf"], ["system.bandwidth_up"]),
        (["system=constant", "system.latency_s=nan"], ["system.latency_s"]),
        (["system=constant", "system.deadline_s=0"], ["system.deadline_s=0"]),
        (["system=constant", "system.server_bandwidth=-5"], ["system.server_bandwidth"]),
        (["system=uniform", "system.compute_s={low:3,high:1}"], ["system.compute_s.low", "at most"]),
        (["system=lognormal", "system.compute_s={median:0.002,sigma:1000}"], ["system.compute_s", "Client"]),
        (["system=constant", "system.over_selection=1"], ["system.over_selection"]),
        (["system=constant", "system.over_selection=1.5", "participation=bernoulli"], ["participation=uniform"]),
        (["system=constant", "system.deadline_s=1e-6"], ["system.deadline_s", "fastest client"]),
        (["system=trace"], ["system.device_file='???'"]),
    ],
)
def test_bad_values_are_refused(make_cfg, args, needles):
    refuse_in_process(make_cfg, args, *needles)


def test_a_bad_value_exits_2_from_the_command_line(tmp_path):
    refuse(
        tmp_path, ["system=constant", "system.compute_s=-1", f"hydra.run.dir={tmp_path / 'out'}"], "system.compute_s"
    )


def write_device(path, clients):
    path.write_text(json.dumps({str(k): {"computation": 100.0, "communication": 5000.0} for k in clients}, indent=1))


def test_trace_missing_clients_names_them_and_the_fix(tmp_path):
    dev = tmp_path / "dev.json"
    write_device(dev, [0, 1, 3])
    err = refuse(
        tmp_path, ["system=trace", f"system.device_file={dev}"], "system.device_file", "client(s) have none: 2"
    )
    assert "client_map=cycle" in err


def test_trace_values_and_declared_format(make_cfg, tmp_path):
    csv = tmp_path / "dev.csv"
    csv.write_text("client,computation,communication\n0,1,2\n1,1,2\n2,-4,2\n3,1,2\n")
    refuse_in_process(make_cfg, ["system=trace", f"system.device_file={csv}"], "Client 2 (line 4)", "computation=-4.0")
    csv.write_text("client,computation,communication\n0,1,2\n1,fast,2\n")
    refuse_in_process(make_cfg, ["system=trace", f"system.device_file={csv}"], "Line 3 holds 'fast'")
    dev = tmp_path / "dev.json"
    write_device(dev, range(4))
    fmt = ["system=trace", f"system.device_file={dev}"]
    refuse_in_process(make_cfg, [*fmt, "system.format=csv"], "Line 1 (the header) lacks")
    refuse_in_process(make_cfg, [*fmt, "system.format=parquet"], "could not be read as Parquet")
    refuse_in_process(
        make_cfg, ["system=trace", f"system.device_file={csv}", "system.format=json"], "Not valid JSON at line 1"
    )


def test_a_pickle_is_never_opened_by_a_run_and_the_converter_needs_permission(tmp_path):
    pkl = tmp_path / "client_device_capacity"  # FedScale's file has no extension: the pickle header gives it away
    pkl.write_bytes(pickle.dumps({0: {"computation": 1.0, "communication": 2.0}}))
    refuse(tmp_path, ["system=trace", f"system.device_file={pkl}", f"hydra.run.dir={tmp_path / 'out'}"], "pickle")
    out = tmp_path / "dev.json"
    refuse(tmp_path, [str(pkl), str(out)], "--allow-pickle", module="sim.system.convert")
    assert not out.exists()


@pytest.mark.parametrize(
    ("trace", "needle"),
    [
        ({"active": [0, 5], "inactive": [6, 9], "finish_time": 10}, "[0.0, 6.0] overlaps [5.0, 9.0]"),
        ({"active": [5, 0], "inactive": [6, 1], "finish_time": 10}, "is not increasing"),
        ({"active": [0, 5], "inactive": [5, 9], "finish_time": 10}, "[0.0, 5.0] overlaps [5.0, 9.0]"),
        ({"active": [0], "inactive": [20], "finish_time": 10}, "finish_time 10"),
        ({"active": [0, 1], "inactive": [0.5], "finish_time": 10}, "equal-length"),
        ({"active": [0], "inactive": [1], "finish_time": 0}, "finish_time=0"),
    ],
)
def test_bad_availability_intervals_name_client_and_line(make_cfg, tmp_path, trace, needle):
    ok = {"active": [0], "inactive": [10], "finish_time": 10}
    path = tmp_path / "avail.json"
    path.write_text(json.dumps({"0": ok, "1": ok, "2": trace, "3": ok}, indent=1))
    line = path.read_text().splitlines().index(' "2": {') + 1
    refuse_in_process(
        make_cfg, ["system=constant", f"system.availability={path}"], "system.availability", needle, f"(line {line})"
    )
