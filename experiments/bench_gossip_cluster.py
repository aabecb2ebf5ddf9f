"""Partitioned synchronous gossip on Ray against the driver-side loop: bytes through the driver, bytes
between actors and time per round (issue 18). Results and the 16-machine projection: gossip_cluster.md.

Every run is its own child process (``run_experiment`` on a fresh local Ray), run one at a time with
``backend.num_threads=1``. Rows:

- W2 (1000 nodes, random 4-regular, MLP 60-32-10) and the same gossip on 10,000 nodes, each with
  ``backend.gossip=driver`` (the driver holds every model, 2 training actors) and ``partitioned`` with
  2 actors (1 CPU each) and 4 actors (0.5 CPU each);
- the 10,000-node case again with ``backend.noop_train=true``: no training, what is left is the
  communication and the merge.

Driver bytes per round: partitioned, the ``driver_bytes`` column (averaged over rounds without an
evaluation); driver path, MEASURED by counting in the child the numpy bytes the ray backend's ``train``
puts into the object store and the numpy bytes its ``ray.get`` returns (task arguments such as id
lists and the pickled strategy are not counted), next to the formula ``2 * N * P * 4``.
Time per round: median of the differences of ``wall_s`` over rounds 2..R-1 (round 1 carries the
warm-up and round 0's evaluation, round R the final evaluation).

    python experiments/bench_gossip_cluster.py            # about 6 minutes on 2 cores
    python experiments/bench_gossip_cluster.py --smoke    # tiny sizes, to check that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import workloads  # noqa: E402

# ---- children ---------------------------------------------------------------------------------------


def _numpy_bytes(obj) -> int:
    """Bytes of the numpy arrays in a (nested) object: what crosses the object store."""
    import numpy as np

    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(_numpy_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_numpy_bytes(v) for v in obj)
    return 0


def _instrument(timings: dict) -> None:
    """Wrap (in this child only) the calls whose time and bytes the table reports."""
    import ray

    import sim.gossip.partitioned as partitioned
    from sim.backends.ray_backend import RayBackend
    from sim.gossip.sync import SyncGossip

    for key in (
        "plan_s",
        "round_s",
        "train_max_s",
        "merge_max_s",
        "driver_train_s",
        "driver_mix_s",
        "driver_path_bytes",
    ):
        timings[key] = []
    counting = {"on": False, "bytes": 0}
    real_put, real_get = ray.put, ray.get

    def put(value, *a, **k):
        if counting["on"]:
            counting["bytes"] += _numpy_bytes(value)
        return real_put(value, *a, **k)

    def get(refs, *a, **k):
        out = real_get(refs, *a, **k)
        if counting["on"]:
            counting["bytes"] += _numpy_bytes(out)
        return out

    ray.put, ray.get = put, get

    real_plan = partitioned.PartitionedSyncGossip._plan

    def _plan(self, *a, **k):  # the driver's per-round plan: cut and put, or (static, no loss) the cached refs
        t = time.perf_counter()
        out = real_plan(self, *a, **k)
        timings["plan_s"].append(time.perf_counter() - t)
        return out

    partitioned.PartitionedSyncGossip._plan = _plan
    real_round = partitioned.PartitionedSyncGossip._round

    def _round(self, round_, plan):
        t = time.perf_counter()
        pub, mer, replaced = real_round(self, round_, plan)
        timings["round_s"].append(time.perf_counter() - t)
        trained = pub if self.cfg.order == "update_merge" else mer
        timings["train_max_s"].append(max(s.get("train_s", 0.0) for s in trained))
        timings["merge_max_s"].append(max(s["merge_s"] for s in mer))
        return pub, mer, replaced

    partitioned.PartitionedSyncGossip._round = _round
    real_train = RayBackend.train

    def train(self, *a, **k):
        counting["on"], counting["bytes"] = True, 0
        t = time.perf_counter()
        try:
            return real_train(self, *a, **k)
        finally:
            counting["on"] = False
            timings["driver_train_s"].append(time.perf_counter() - t)
            timings["driver_path_bytes"].append(counting["bytes"])

    RayBackend.train = train
    real_mix = SyncGossip.mix

    def mix(self, *a, **k):
        t = time.perf_counter()
        out = real_mix(self, *a, **k)
        timings["driver_mix_s"].append(time.perf_counter() - t)
        return out

    SyncGossip.mix = mix


def child_sim(args: list[str]) -> dict:
    """One gossipsoup run in this (fresh) process, instrumented; returns its per-round rows and timings."""
    import csv
    import logging

    from sim.run import run_experiment

    spec = json.loads(args[0])
    cfg = workloads.compose_workload(tuple(spec["workload"]), *spec["overrides"])
    cut_lines: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            if message.startswith("partitioned gossip:"):
                cut_lines.append(message)

    logging.getLogger("sim.gossip").addHandler(Catch())
    logging.getLogger("sim.gossip").setLevel(logging.INFO)
    timings: dict = {}
    _instrument(timings)
    with tempfile.TemporaryDirectory() as out:
        summary = run_experiment(cfg, out)
        with open(Path(out) / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
    keep = ("round", "wall_s", "driver_bytes", "bytes_between_actors", "models_between_actors", "test_accuracy")
    return {
        "rows": [{k: float(r[k]) for k in keep if r.get(k) not in (None, "")} for r in rows],
        "timings": timings,
        "cut_line": cut_lines[0] if cut_lines else "",
        "loop_s": summary["loop_s"],
        "setup_s": summary["setup_s"],
    }


def _random_regular_fast(n: int, d: int, seed: int):
    """Edges of a random near-d-regular graph: the configuration model, shuffled stubs paired.

    networkx's ``random_regular_graph`` took 2.4 s at 10^5 nodes and grows faster than linearly; this takes
    0.4 s at 10^6. It is the same distribution except for the self-loops and duplicate pairs it keeps (about
    (d - 1) / 2 and (d - 1)^2 / 4 of them in expectation, whatever n), which ``partition_nodes`` and
    ``cut_summary`` drop: the 10^5-node rows of both generators give the same cut."""
    import numpy as np

    rng = np.random.default_rng(seed)
    stubs = rng.permutation(np.repeat(np.arange(n, dtype=np.int64), d)).reshape(-1, 2)
    return stubs


def _plan_figures(n: int, edges, parts, k: int) -> dict:
    """The driver's per-round plan for this graph (no losses): its build time and bytes, and how many
    models cross between parts per round (a node's model goes once to each other part it has a neighbour in)."""
    import numpy as np
    import torch

    from sim.gossip.partitioned import round_plan

    e = edges[edges[:, 0] != edges[:, 1]]
    rows = np.concatenate([e[:, 0], e[:, 1], np.arange(n)])
    cols = np.concatenate([e[:, 1], e[:, 0], np.arange(n)])
    order = np.lexsort((cols, rows))
    row_ids, col_ids = torch.from_numpy(rows[order]), torch.from_numpy(cols[order])
    values = torch.full((len(row_ids),), 0.2, dtype=torch.float32)
    local: np.ndarray = np.empty(n, dtype=np.int64)
    for a in range(k):
        members = np.flatnonzero(parts == a)
        local[members] = np.arange(len(members))
    t = time.perf_counter()
    plan = round_plan(row_ids, col_ids, values, torch.zeros(len(row_ids), dtype=torch.bool), parts, local, k)
    plan_s = time.perf_counter() - t
    crossing = sum(len(ids) for row in plan.sends for ids in row if ids is not None)
    return {"plan_s": plan_s, "plan_bytes": plan.nbytes, "models_crossing": crossing}


def child_cut(args: list[str]) -> dict:
    """Cut fractions of METIS and contiguous blocks, straight from sim.gossip.partition."""
    import networkx as nx
    import numpy as np

    from sim.gossip.partition import cut_summary, partition_nodes

    cases = json.loads(args[0])
    out = []
    for n, d, k, method, generator in cases:
        t = time.perf_counter()
        if generator == "networkx":
            edges = np.asarray(nx.random_regular_graph(d, n, seed=0).edges(), dtype=np.int64)
        else:
            edges = _random_regular_fast(n, d, 0)
        gen_s = time.perf_counter() - t
        t = time.perf_counter()
        parts = partition_nodes(n, edges, k, method, None, 0)
        part_s = time.perf_counter() - t
        s = cut_summary(parts, edges, k)
        sizes = s["part_sizes"]
        plan = _plan_figures(n, edges, parts, k) if generator == "pairing" and method == "metis" else {}
        out.append(
            {
                "nodes": n,
                "degree": d,
                "parts": k,
                "method": method,
                "generator": generator,
                "edges": s["edges"],
                "cut_fraction": s["cut_fraction"],
                "boundary_fraction": sum(s["boundary_nodes"]) / n,
                "imbalance": max(sizes) / (n / k),
                "gen_s": gen_s,
                "partition_s": part_s,
                **plan,
            }
        )
    return {"cuts": out}


CHILDREN = {"sim": child_sim, "cut": child_cut}


def run_child(kind: str, *args: str) -> dict:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"},
    )
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child {kind} {args[:1]} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - start
    return result


# ---- the table --------------------------------------------------------------------------------------


def per_round(result: dict) -> dict:
    """Median seconds per round over rounds 2..R-1, and the byte columns averaged over those rounds."""
    rows = [r for r in result["rows"] if r["round"] >= 1]
    last = max(r["round"] for r in rows)
    steady = [r for r in rows if 2 <= r["round"] < last] or rows[-1:]
    wall = {r["round"]: r["wall_s"] for r in result["rows"]}
    times = [wall[r["round"]] - wall[r["round"] - 1] for r in steady]
    mean = lambda key: statistics.fmean(r.get(key, 0.0) for r in steady)  # noqa: E731
    t = result["timings"]
    picked = [int(r["round"]) - 1 for r in steady]  # indexes into the per-round timing lists
    pick = lambda key: statistics.median([t[key][i] for i in picked]) if t.get(key) else float("nan")  # noqa: E731
    return {
        "s_round": statistics.median(times),
        "driver_bytes": mean("driver_bytes"),
        "between_bytes": mean("bytes_between_actors"),
        "between_models": mean("models_between_actors"),
        "driver_path_bytes": pick("driver_path_bytes"),
        "plan_s": pick("plan_s"),
        "round_s": pick("round_s"),
        "train_max_s": pick("train_max_s"),
        "merge_max_s": pick("merge_max_s"),
        "driver_train_s": pick("driver_train_s"),
        "driver_mix_s": pick("driver_mix_s"),
        "accuracy": next((r["test_accuracy"] for r in reversed(result["rows"]) if "test_accuracy" in r), float("nan")),
    }


def cut_of(line: str) -> str:
    """'c/E (x%)' from the run's log line 'partitioned gossip: ... c of E edges (x%) cross actors'."""
    if not line:
        return "-"
    words = line.split(";")[-1].split()
    return f"{words[0]}/{words[2]} {words[4]}"


def fmt_bytes(b: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= size:
            return f"{b / size:.2f} {unit}"
    return f"{b:.0f} B"


def bench_runs(cases: list[tuple[str, int, tuple[str, ...], str]], params: int) -> None:
    print(
        f"\n{'workload':<16}{'path':<13}{'actors':>7}{'driver B/round':>16}{'(how)':>10}"
        f"{'between actors':>16}{'models btw':>11}{'cut edges':>20}{'s/round':>9}{'vs driver':>10}"
        f"{'plan s':>8}{'train s':>9}{'merge s':>9}{'acc':>8}"
    )
    base: dict[str, float] = {}
    details = []
    for label, nodes, overrides, path in cases:
        actors = next(int(o.split("=")[1]) for o in overrides if o.startswith("backend.num_actors="))
        r = run_child("sim", json.dumps({"workload": list(overrides), "overrides": []}))
        m = per_round(r)
        if path == "driver":
            base[label] = m["s_round"]
            driver_b, how = m["driver_path_bytes"], "measured"
            formula = 2 * nodes * params * 4
            details.append(f"{label}: driver path measured {driver_b:.0f} B/round, 2*N*P*4 = {formula} B")
            train_s, merge_s = m["driver_train_s"], m["driver_mix_s"]
        else:
            driver_b, how = m["driver_bytes"], "column"
            train_s, merge_s = m["train_max_s"], m["merge_max_s"]
        ratio = base[label] / m["s_round"] if label in base else float("nan")
        print(
            f"{label:<16}{path:<13}{actors:>7}{fmt_bytes(driver_b):>16}{how:>10}"
            f"{fmt_bytes(m['between_bytes']):>16}{m['between_models']:>11.0f}{cut_of(r['cut_line']):>20}"
            f"{m['s_round']:>9.3f}{ratio:>9.2f}x{m['plan_s']:>8.3f}{train_s:>9.3f}{merge_s:>9.3f}{m['accuracy']:>8.4f}",
            flush=True,
        )
        details.append(
            f"{label} {path} {actors} actors: setup {r['setup_s']:.1f} s, process {r['process_s']:.1f} s, "
            f"round() {m['round_s']:.3f} s, per-round wall {m['s_round']:.3f} s"
        )
    print("  (plan s: the driver's per-round plan (cut and put, or the cached references);")
    print("   train s / merge s: slowest actor's, or for the driver path the driver's")
    print("   backend.train call (actors' training + transfers) / its mix; medians over rounds 2..R-1)")
    for line in details:
        print("  " + line)


def bench_cuts(cases: list) -> None:
    r = run_child("cut", json.dumps(cases))
    print(
        f"\n{'nodes':>9}{'degree':>7}{'parts':>6}{'method':>12}{'graph':>11}{'edges':>10}{'cut':>8}"
        f"{'boundary':>10}{'max part':>10}{'graph s':>9}{'part s':>8}{'models x':>10}{'plan MB':>9}{'plan s':>8}"
    )
    for c in r["cuts"]:
        print(
            f"{c['nodes']:>9}{c['degree']:>7}{c['parts']:>6}{c['method']:>12}{c['generator']:>11}{c['edges']:>10}"
            f"{c['cut_fraction']:>8.1%}{c['boundary_fraction']:>10.1%}{c['imbalance']:>9.3f}x"
            f"{c['gen_s']:>9.1f}{c['partition_s']:>8.1f}{c.get('models_crossing', 0):>10}"
            f"{c.get('plan_bytes', 0) / 1e6:>9.1f}{c.get('plan_s', 0.0):>8.2f}",
            flush=True,
        )


def cases_for(nodes: int, rounds: int, label: str, noop: bool = False, partitioned_only=False) -> list:
    common = (*workloads.gossip_scale(nodes, rounds), "backend=ray", "backend.num_threads=1")
    if noop:
        common = (*common, "backend.noop_train=true")
    out = []
    if not partitioned_only:
        out.append((label, nodes, (*common, "backend.gossip=driver", "backend.num_actors=2"), "driver"))
    out.append((label, nodes, (*common, "backend.gossip=partitioned", "backend.num_actors=2"), "partitioned"))
    out.append(
        (
            label,
            nodes,
            (*common, "backend.gossip=partitioned", "backend.num_actors=4", "backend.num_cpus=0.5"),
            "partitioned",
        )
    )
    return out


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        print(json.dumps(CHILDREN[sys.argv[2]](sys.argv[3:])))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks that every part runs")
    ap.add_argument("--parts", nargs="+", choices=("runs", "cuts"), default=["runs", "cuts"])
    args = ap.parse_args()
    params = 60 * 32 + 32 + 32 * 10 + 10  # MLP 60-32-10
    print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
    if "runs" in args.parts:
        small, large = (60, 200) if args.smoke else (1000, 10_000)
        cases = [
            *cases_for(small, 4 if args.smoke else 8, f"W2 {small}"),
            *cases_for(large, 4 if args.smoke else 5, f"gossip {large}"),
            *cases_for(large, 4 if args.smoke else 5, f"noop {large}", noop=True),
        ]
        print(f"Synchronous gossip, random 4-regular, MLP 60-32-10 (P = {params}), 100 nodes evaluated at the end")
        bench_runs(cases, params)
    if "cuts" in args.parts:
        if args.smoke:
            cuts = [(200, 4, k, m, "networkx") for k in (2, 4) for m in ("metis", "contiguous")]
            cuts += [(2000, 4, 16, "metis", "pairing")]
        else:
            cuts = [(10_000, 4, k, m, "networkx") for k in (2, 4, 16) for m in ("metis", "contiguous")]
            cuts += [(100_000, 4, 16, "metis", "networkx"), (100_000, 4, 16, "metis", "pairing")]
            cuts += [(1_000_000, d, 16, "metis", "pairing") for d in (4, 10)]
            cuts += [(1_000_000, 4, 16, "contiguous", "pairing")]
        print("\nCut of random regular graphs (sim.gossip.partition, unit node weights, seed 0)")
        bench_cuts(cuts)
    print("  (boundary: nodes with a neighbour in another part; models x: models that cross parts per round;")
    print("   plan MB / plan s: the driver's round_plan for that graph, with all 16 parts; on the pairing graphs)")
    print(f"load average at the end {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")


if __name__ == "__main__":
    main()
