#!/usr/bin/env bash
# The GPU paths of every backend, for a machine with a CUDA GPU (one is enough); prints a table, exits 1 on a
# mismatch.
#
#   bash experiments/gpu_check.sh            # results in a temporary folder, or in $OUT when it is set
#
# Runs small FL, sync-gossip and image configs on backend=sequential with backend.device=cpu (the CPU reference)
# and compares each GPU case with it. backend.device=cuda for the in-process backends (summary.json must say
# cuda; the table prints host_device_bytes, the bytes the backend moved between host and device):
#   seq_cuda / vec_cuda                FL (FedAvg) on backend=sequential / vectorized
#   vec_fedadam                        FedAdam, its server state aggregated on the GPU
#   vec_dp                             central DP (noise drawn on the CPU generator, added on the GPU)
#   seq_gossip_cuda / vec_gossip_cuda  sync gossip, every node's model on the GPU
#   seq_img_cuda / vec_img_cuda        a CNN on uint8 images (a generated .npz) with crop + flip augmentation
#   auto_cuda                          backend=auto with device=auto (what auto picks on a GPU)
# and backend=ray (skipped without Ray) with GPUs used four ways:
#   agg_cuda   aggregation on a GPU aggregator actor (aggregate_on=worker, device=cuda), CPU training actors
#   fedadam    the same with a rule that keeps server state (moments go to the GPU and come back)
#   frac       four training actors sharing one GPU (num_gpus=0.2 each) that train on cuda
#   both       fractional GPU actors and the GPU aggregator together
#   gossip     sync gossip on fractional GPU actors that own parts of the graph (backend.gossip=partitioned)
#   gossip_drv sync gossip with backend.gossip=driver (the merge stays in the driver)
# Each must give the reference's losses to 1e-3 (GPU and CPU kernels round differently; the CNN cases 2e-2, as
# cuDNN convolutions use TF32 by default) and say cuda. Needs torch with CUDA; a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

python - <<'EOF'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"gpu_check: torch {torch.__version__} sees no CUDA GPU; this check needs one "
             "(the CPU paths are covered by tests/test_device.py and tests/test_ray_backend.py)")
try:
    import ray
    with_ray = f"ray {ray.__version__}"
except ImportError:
    with_ray = "no Ray (its cases are skipped)"
print(f"gpu_check: torch {torch.__version__}, {with_ray}, {torch.cuda.device_count()} GPU(s): "
      f"{torch.cuda.get_device_name(0)}")
EOF

OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
FL=(progress=false num_clients=20 model.hidden=[32] rounds=5 participation.clients_per_round=10 seed=0)
GOSSIP=(progress=false num_clients=12 model.hidden=[32] rounds=4 mode=gossip topology=ring strategy=gossip_avg seed=0)
# uint8 images (they stay uint8 on the device) with augmentation: a 3x12x12 .npz made here, no download
OUT="$OUT" python - <<'EOF'
import os
import numpy as np
r = np.random.default_rng(0)
y = r.integers(0, 4, 600)
x = (r.integers(0, 120, (600, 12, 12, 3)) + 30 * y[:, None, None, None]).astype(np.uint8)
np.savez(os.path.join(os.environ["OUT"], "images.npz"), x_train=x, y_train=y)
EOF
IMG=(progress=false dataset=npz "dataset.path=$OUT/images.npz" model=cnn model.channels=[8,8] model.hidden=16
     num_clients=8 participation.clients_per_round=4 rounds=3 train.crop_padding=2 train.hflip=true seed=0)

run() {  # name, overrides...
    local name=$1
    shift
    echo "gpu_check: $name"
    # a crash is shown and the other cases still run (one device session should see every case)
    python -m sim "$@" "hydra.run.dir=$OUT/$name" > "$OUT/$name.out" 2>&1 || tail -n 25 "$OUT/$name.out"
}

CPU=(backend=sequential backend.num_threads=1 backend.device=cpu)
run seq              "${FL[@]}" "${CPU[@]}"
run seq_fedadam      "${FL[@]}" strategy=fedadam "${CPU[@]}"
run seq_gossip       "${GOSSIP[@]}" "${CPU[@]}"
run seq_img          "${IMG[@]}" "${CPU[@]}"
run seq_dp           "${FL[@]}" dp=central_fixed "${CPU[@]}"
run seq_cuda         "${FL[@]}" backend=sequential backend.device=cuda
run vec_cuda         "${FL[@]}" backend=vectorized backend.device=cuda
run vec_fedadam      "${FL[@]}" strategy=fedadam backend=vectorized backend.device=cuda
run vec_dp           "${FL[@]}" dp=central_fixed backend=vectorized backend.device=cuda
run seq_gossip_cuda  "${GOSSIP[@]}" backend=sequential backend.device=cuda
run vec_gossip_cuda  "${GOSSIP[@]}" backend=vectorized backend.device=cuda
run seq_img_cuda     "${IMG[@]}" backend=sequential backend.device=cuda
run vec_img_cuda     "${IMG[@]}" backend=vectorized backend.device=cuda
run auto_cuda        "${FL[@]}" backend=auto backend.device=auto
CASES="seq_cuda vec_cuda vec_fedadam vec_dp seq_gossip_cuda vec_gossip_cuda seq_img_cuda vec_img_cuda auto_cuda"
if python -c "import ray" 2> /dev/null; then
    run agg_cuda     "${FL[@]}" backend=ray backend.aggregate_on=worker backend.device=cuda
    run fedadam      "${FL[@]}" strategy=fedadam backend=ray backend.aggregate_on=worker backend.device=cuda
    run frac         "${FL[@]}" backend=ray backend.num_actors=4 backend.num_gpus=0.2
    run both         "${FL[@]}" backend=ray backend.num_actors=4 backend.num_gpus=0.2 backend.aggregate_on=worker
    run gossip       "${GOSSIP[@]}" backend=ray backend.num_actors=4 backend.num_gpus=0.2
    run gossip_drv   "${GOSSIP[@]}" backend=ray backend.num_actors=4 backend.num_gpus=0.2 backend.gossip=driver
    CASES="$CASES agg_cuda fedadam frac both gossip gossip_drv"
fi

OUT="$OUT" CASES="$CASES" python - <<'EOF'
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

out = Path(os.environ["OUT"])
refs = {"fedadam": "seq_fedadam", "vec_fedadam": "seq_fedadam", "gossip": "seq_gossip", "gossip_drv": "seq_gossip"}
refs.update({"seq_gossip_cuda": "seq_gossip", "vec_gossip_cuda": "seq_gossip"})
refs.update({"seq_img_cuda": "seq_img", "vec_img_cuda": "seq_img", "vec_dp": "seq_dp"})
cases = {case: refs.get(case, "seq") for case in os.environ["CASES"].split()}
bad = []
print(f"\n{'case':<16} {'reference':<12} {'max |d loss|':>13} {'max |d acc|':>12} device, or the ray log")
for case, ref in cases.items():
    if not ((out / ref / "metrics.csv").exists() and (out / case / "metrics.csv").exists()):
        print(f"{case:<16} {ref:<12} {'crashed':>13} {'':>12} (see {case}.out / {ref}.out in {out})")
        bad.append(case)
        continue
    a, b = pd.read_csv(out / ref / "metrics.csv"), pd.read_csv(out / case / "metrics.csv")
    d_loss = max(np.nanmax(np.abs(a[c] - b[c])) for c in ("test_loss", "train_loss"))
    d_acc = float(np.nanmax(np.abs(a["test_accuracy"] - b["test_accuracy"])))
    summary = json.loads((out / case / "summary.json").read_text())
    if "device" in summary:  # sequential / vectorized / auto: backend.device and the bytes it moved
        line = f"{summary['backend']} on {summary['device']}, host_device_bytes {summary['host_device_bytes']:,}"
    else:
        said = ("training actor", "partitioned gossip")  # the backend's line, or partitioned gossip's own
        logs = [l for p in (out / case).glob("*.log") for l in p.read_text().splitlines() if any(s in l for s in said)]
        line = logs[0].split("] - ")[-1] if logs else "(no ray backend line in the log)"
    uses_cuda = "cuda" in line
    print(f"{case:<16} {ref:<12} {d_loss:>13.2e} {d_acc:>12.4f} {line}")
    if not (d_loss < (2e-2 if "img" in case else 1e-3) and uses_cuda):
        bad.append(case)
print(f"\nresults in {out}")
sys.exit(f"gpu_check: FAILED: {', '.join(bad)}" if bad else 0)
EOF
echo "gpu_check: all cases match the CPU reference"
