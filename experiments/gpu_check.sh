#!/usr/bin/env bash
# The ray backend's GPU paths, for a machine with a CUDA GPU (one is enough); prints a table, exits 1 on a mismatch.
#
#   bash experiments/gpu_check.sh            # results in a temporary folder, or in $OUT when it is set
#
# Runs one small FL config and one sync-gossip config on backend=sequential (the CPU reference) and on
# backend=ray with GPUs used four ways:
#   agg_cuda   aggregation on a GPU aggregator actor (aggregate_on=worker, device=cuda), CPU training actors
#   fedadam    the same with a rule that keeps server state (moments go to the GPU and come back)
#   frac       four training actors sharing one GPU (num_gpus=0.2 each) that train on cuda
#   both       fractional GPU actors and the GPU aggregator together
#   gossip     sync gossip on fractional GPU actors that own parts of the graph (backend.gossip=partitioned)
#   gossip_drv sync gossip with backend.gossip=driver (the merge stays in the driver)
# and checks that each gives the reference's losses to 1e-3 (GPU and CPU kernels round differently)
# and that the backend's log says cuda. Needs torch with CUDA and gossipsoup[ray]; about a minute.
set -euo pipefail
cd "$(dirname "$0")/.."

python - <<'EOF'
import sys
import torch
try:
    import ray  # noqa: F401
except ImportError:
    sys.exit('gpu_check: Ray is not installed: pip install "gossipsoup[ray]"')
if not torch.cuda.is_available():
    sys.exit(f"gpu_check: torch {torch.__version__} sees no CUDA GPU; this check needs one "
             "(the CPU fallback is covered by tests/test_ray_backend.py)")
print(f"gpu_check: torch {torch.__version__}, ray {ray.__version__}, {torch.cuda.device_count()} GPU(s): "
      f"{torch.cuda.get_device_name(0)}")
EOF

OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
FL=(progress=false num_clients=20 model.hidden=[32] rounds=5 participation.clients_per_round=10 seed=0)
GOSSIP=(progress=false num_clients=12 model.hidden=[32] rounds=4 mode=gossip topology=ring strategy=gossip_avg seed=0)

run() {  # name, overrides...
    local name=$1
    shift
    echo "gpu_check: $name"
    # a crash is shown and the other cases still run (one device session should see every case)
    python -m sim "$@" "hydra.run.dir=$OUT/$name" > "$OUT/$name.out" 2>&1 || tail -n 25 "$OUT/$name.out"
}

run seq              "${FL[@]}" backend=sequential backend.num_threads=1
run seq_fedadam      "${FL[@]}" strategy=fedadam backend=sequential backend.num_threads=1
run seq_gossip       "${GOSSIP[@]}" backend=sequential backend.num_threads=1
run agg_cuda         "${FL[@]}" backend=ray backend.aggregate_on=worker backend.device=cuda
run fedadam          "${FL[@]}" strategy=fedadam backend=ray backend.aggregate_on=worker backend.device=cuda
run frac             "${FL[@]}" backend=ray backend.num_actors=4 backend.num_gpus=0.2
run both             "${FL[@]}" backend=ray backend.num_actors=4 backend.num_gpus=0.2 backend.aggregate_on=worker
run gossip           "${GOSSIP[@]}" backend=ray backend.num_actors=4 backend.num_gpus=0.2
run gossip_drv       "${GOSSIP[@]}" backend=ray backend.num_actors=4 backend.num_gpus=0.2 backend.gossip=driver
CASES="agg_cuda fedadam frac both gossip gossip_drv"

OUT="$OUT" CASES="$CASES" python - <<'EOF'
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

out = Path(os.environ["OUT"])
refs = {"fedadam": "seq_fedadam", "gossip": "seq_gossip", "gossip_drv": "seq_gossip"}
cases = {case: refs.get(case, "seq") for case in os.environ["CASES"].split()}
bad = []
print(f"\n{'case':<10} {'reference':<12} {'max |d loss|':>13} {'max |d acc|':>12} ray log")
for case, ref in cases.items():
    if not ((out / ref / "metrics.csv").exists() and (out / case / "metrics.csv").exists()):
        print(f"{case:<10} {ref:<12} {'crashed':>13} {'':>12} (see {case}.out / {ref}.out in {out})")
        bad.append(case)
        continue
    a, b = pd.read_csv(out / ref / "metrics.csv"), pd.read_csv(out / case / "metrics.csv")
    d_loss = max(np.nanmax(np.abs(a[c] - b[c])) for c in ("test_loss", "train_loss"))
    d_acc = float(np.nanmax(np.abs(a["test_accuracy"] - b["test_accuracy"])))
    said = ("training actor", "partitioned gossip")  # the backend's line, or partitioned gossip's own
    logs = [l for p in (out / case).glob("*.log") for l in p.read_text().splitlines() if any(s in l for s in said)]
    line = logs[0].split("] - ")[-1] if logs else "(no ray backend line in the log)"
    uses_cuda = "cuda" in line
    print(f"{case:<10} {ref:<12} {d_loss:>13.2e} {d_acc:>12.4f} {line}")
    if not (d_loss < 1e-3 and uses_cuda):
        bad.append(case)
print(f"\nresults in {out}")
sys.exit(f"gpu_check: FAILED: {', '.join(bad)}" if bad else 0)
EOF
echo "gpu_check: all cases match the CPU reference"
