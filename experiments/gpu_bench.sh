#!/usr/bin/env bash
# Sequential against vectorized on one GPU, checked against the CPU reference; meant to fit one lent device session.
#
#   bash experiments/gpu_bench.sh               # a CUDA GPU: the full table (meant for under 8 minutes; not run on a GPU yet)
#   bash experiments/gpu_bench.sh --cpu --tiny  # the dry run on a CPU: the same code on tiny sizes (about 5 minutes here)
#
# Three parts, each under its own time limit so the whole stays inside one session:
#   1. experiments/gpu_bench.py: W1 at 10,000 clients (1,000 a round), ResNet-8 (GroupNorm) and LeNet-5 FL on
#      CIFAR-/MNIST-shaped images (100 clients a round), the CharLSTM on Shakespeare-format text, 10,000-node sync
#      gossip; each on backend=sequential and backend=vectorized with backend.device=cuda, seconds per round side
#      by side, and round 1's losses against backend=sequential backend.device=cpu (1e-3; conv nets 2e-2: TF32);
#   2. experiments/bench_conv.py: ResNet-8's vmap variants (grouped, im2col, bf16 autocast, torch.compile);
#   3. the pfl row: experiments/peers/run_peers.py --workloads w1 --peers gossipsoup pfl, when the peers harness
#      and its pfl environment are there (the lent machine reaches no package registry: build the environment
#      beforehand under $GOSSIPSOUP_PEERS_HOME); otherwise one line says why it is skipped.
# Exit code: 1 when a check of part 1 misses its tolerance or part 1 does not finish, 2 on bad arguments; the
# table is printed either way.
set -uo pipefail
cd "$(dirname "$0")/.."

device=cuda
tiny=()
for arg in "$@"; do
    case "$arg" in
        --cpu | --dry-run) device=cpu ;;
        --tiny) tiny=(--tiny) ;;
        *)
            echo "gpu_bench.sh: unknown argument $arg: allowed are --cpu (or --dry-run) and --tiny" >&2
            exit 2
            ;;
    esac
done
if [ "$device" = cpu ]; then
    export OMP_NUM_THREADS=1
    tiny=(--tiny)
else
    if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_bench.sh: torch sees no CUDA GPU; on a CPU run the dry run: bash experiments/gpu_bench.sh --cpu --tiny" >&2
        exit 2
    fi
fi

status=0
echo "== 1. sequential vs vectorized on $device, against the CPU reference"
timeout 420 python experiments/gpu_bench.py --device "$device" "${tiny[@]}" || status=1

echo "== 2. ResNet-8: the vmap variants (backend.vmap)"
if [ "$device" = cpu ]; then
    conv_args=(--num-clients 8 --clients-per-round 4 --rows 400 --rounds 1 --variants sequential vmap im2col bf16)
else
    conv_args=(--clients-per-round 100 --rounds 2 --variants sequential vmap im2col bf16 compile)
fi
timeout 150 python experiments/bench_conv.py --device "$device" --workloads resnet8 "${conv_args[@]}" ||
    echo "bench_conv: did not finish within its limit (exit $?); its rows above are what ran"

echo "== 3. the pfl row"
if [ ! -f experiments/peers/run_peers.py ]; then
    echo "pfl row: skipped: experiments/peers/run_peers.py is not in this checkout"
elif [ "${#tiny[@]}" -gt 0 ]; then
    echo "pfl row: skipped in the dry run (it builds or needs the peers' environments: run_peers.py --help)"
else
    timeout 150 python experiments/peers/run_peers.py --workloads w1 --peers gossipsoup pfl --csv /tmp/gpu_bench_pfl.csv ||
        echo "pfl row: skipped: run_peers.py exited $? (no pfl environment on this machine, or over its limit)"
fi
exit $status
