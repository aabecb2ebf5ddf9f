"""gossipsoup beside pfl, Flower and a hand-written PyTorch loop: the same workloads from the same data files.

    python experiments/peers/run_peers.py                      # every workload on every peer, one table
    python experiments/peers/run_peers.py --workloads w1 --peers gossipsoup pfl

For each workload the data file is written once (peer_data.py) and every peer runs in its own virtual
environment (peer_envs.py builds them on first use) as its own process, one after another, with
``OMP_NUM_THREADS=1`` and one torch thread. ``process s`` is the whole process measured from here (start to
exit: interpreter, imports, data loading, the run, shutdown); ``loop s`` is what the peer reports for its
rounds (peer_common.LoopClock: from just before round 1 to the end of the last round's test evaluation);
``accuracy`` is the final global model's on the test set. ``x gossipsoup`` columns are the peer's time over
gossipsoup's on the same workload (above 1: gossipsoup is faster). The table goes to stdout and the rows to a
CSV (``--csv``), with the 1-minute load average before each run, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import peer_common as pc  # noqa: E402
import peer_data  # noqa: E402
import peer_envs as envs  # noqa: E402

PEERS = ("gossipsoup", "pfl", "flower", "torch")
COLUMNS = ("workload", "peer", "process_s", "loop_s", "accuracy", "process_x", "loop_x", "cpu_s", "load1")


def gossipsoup_args(work: pc.Workload, data: Path, clients: int, seed: int, run_dir: Path) -> list[str]:
    """``python -m sim`` overrides for the workload on its data file (the file's own clients: natural)."""
    model = (
        ["model=lenet"] if work.model == "lenet" else ["model=mlp", f"model.hidden=[{','.join(map(str, work.hidden))}]"]
    )
    return [
        "-m",
        "sim",
        "dataset=npz",
        f"dataset.path={data}",
        "dataset.val_fraction=0",
        "partition=natural",
        f"num_clients={clients}",
        *model,
        "strategy=fedavg",
        "participation=uniform",
        f"participation.clients_per_round={work.clients_per_round}",
        f"train.epochs={work.epochs}",
        f"train.batch_size={work.batch_size}",
        f"train.lr={work.lr}",
        f"rounds={work.rounds}",
        f"seed={seed}",
        "backend.num_threads=1",
        "progress=false",
        "checkpoint.every=null",
        f"hydra.run.dir={run_dir}",
    ]


def peer_command(peer: str, python: Path, work: pc.Workload, data: Path, clients: int, seed: int, run_dir: Path):
    if peer == "gossipsoup":
        return [str(python), *gossipsoup_args(work, data, clients, seed, run_dir)]
    script = HERE / f"peer_{peer}.py"
    return [str(python), str(script), "--workload", work.name, "--data", str(data), "--seed", str(seed)]


def parse_result(peer: str, stdout: str, run_dir: Path) -> dict:
    """``loop_s`` and ``accuracy`` from a finished peer: gossipsoup's summary.json, the others' result line."""
    if peer == "gossipsoup":
        summary = json.loads((run_dir / "summary.json").read_text())
        return {"loop_s": float(summary["loop_s"]), "accuracy": float(summary["final"]["test_accuracy"])}
    for line in reversed(stdout.splitlines()):
        if line.startswith(pc.RESULT_TAG):
            result = json.loads(line[len(pc.RESULT_TAG) :])
            return {"loop_s": float(result["loop_s"]), "accuracy": float(result["accuracy"])}
    raise RuntimeError(f"{peer} printed no {pc.RESULT_TAG.strip()} line")


def run_one(peer: str, work: pc.Workload, data: Path, clients: int, seed: int) -> dict:
    python = envs.ensure(peer, log=lambda m: print(m, file=sys.stderr))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    if peer == "gossipsoup":
        env.pop("PYTHONPATH")
    with tempfile.TemporaryDirectory(prefix=f"peers-{peer}-") as tmp:
        run_dir = Path(tmp) / "run"
        load1 = os.getloadavg()[0]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run(
            peer_command(peer, python, work, data, clients, seed, run_dir),
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
        )
        process_s = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise RuntimeError(f"{peer} on {work.name} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        result = parse_result(peer, proc.stdout, run_dir)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"workload": work.name, "peer": peer, "process_s": process_s, "cpu_s": cpu_s, "load1": load1, **result}


def add_ratios(rows: list[dict]) -> list[dict]:
    """``process_x`` / ``loop_x``: each row's time over gossipsoup's on the same workload (None without one)."""
    base = {r["workload"]: r for r in rows if r["peer"] == "gossipsoup"}
    for r in rows:
        g = base.get(r["workload"])
        r["process_x"] = r["process_s"] / g["process_s"] if g else None
        r["loop_x"] = r["loop_s"] / g["loop_s"] if g else None
    return rows


def _num(value, fmt: str, suffix: str = "") -> str:
    return "" if value is None else format(value, fmt) + suffix


def format_table(rows: list[dict]) -> str:
    """The rows as one Markdown table, ratios beside the times they compare."""
    lines = [
        "| workload | peer | process s | x gossipsoup | loop s | x gossipsoup | accuracy | process CPU s | load 1 min "
        "|",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['workload']} | {r['peer']} | {_num(r['process_s'], '.2f')} | {_num(r['process_x'], '.2f', 'x')} "
            f"| {_num(r['loop_s'], '.2f')} | {_num(r['loop_x'], '.2f', 'x')} | {_num(r['accuracy'], '.4f')} "
            f"| {_num(r['cpu_s'], '.1f')} | {_num(r['load1'], '.1f')} |"
        )
    return "\n".join(lines)


def write_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", nargs="+", choices=sorted(pc.WORKLOADS), default=["w1", "digits", "cifar"])
    ap.add_argument("--peers", nargs="+", choices=PEERS, default=list(PEERS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", type=Path, default=envs.home() / "data", help="where the data files are written")
    ap.add_argument("--csv", type=Path, default=HERE / "results.csv")
    args = ap.parse_args(argv)
    rows = []
    for name in args.workloads:
        work = pc.WORKLOADS[name]
        data = peer_data.write(name, args.seed, args.data_dir)
        clients = len(pc.load(str(data)).clients)
        for peer in args.peers:
            row = run_one(peer, work, data, clients, args.seed)
            print(
                f"[peers] {name} {peer}: process {row['process_s']:.2f} s, loop {row['loop_s']:.2f} s, "
                f"accuracy {row['accuracy']:.4f} (load {row['load1']:.1f})",
                file=sys.stderr,
                flush=True,
            )
            rows.append(row)
    add_ratios(rows)
    print(format_table(rows))
    write_csv(rows, args.csv)
    print(f"rows written to {args.csv}", file=sys.stderr)


if __name__ == "__main__":
    main()
