"""What compression costs: each compressor's roundtrip of K models of P parameters (one ``[K, P]`` float32 stack).

The stack (normal values) is built once; each compressor runs once to warm up, then ``--repeats`` times with one
generator per row (the per-client streams FL uses); the median wall time counts, and the CPU seconds of that
same call (all threads) are printed beside it. MB/s is the stack's float32 size (K x P x 4 bytes) over the wall
time. The machine's load average is printed with the table: the project's 2 cores are
shared, and the times scale with what else runs.

    OMP_NUM_THREADS=2 python experiments/bench_compress.py [--models 100] [--params 1000000] [--threads 2]
                                                           [--repeats 3] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from sim.compress import QSGD, Compressor, Quantize, RandomK, ScaledSign, TopK, compress_streams


def compressors() -> list[tuple[str, Compressor]]:
    return [
        ("top-k 1%", TopK(0.01)),
        ("top-k 10%", TopK(0.1)),
        ("random-k 1%", RandomK(0.01)),
        ("qsgd s=16", QSGD(16)),
        ("sign", ScaledSign()),
        ("quantize 8-bit", Quantize(8)),
        ("quantize 4-bit", Quantize(4)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="4 models of 1,000 parameters, one repeat")
    args = parser.parse_args()
    if args.smoke:
        args.models, args.params, args.repeats = 4, 1000, 1
    torch.set_num_threads(args.threads)
    x = torch.randn(args.models, args.params, generator=torch.Generator().manual_seed(0))
    ids = torch.arange(args.models)
    megabytes = x.numel() * 4 / 1e6
    tag = " (smoke)" if args.smoke else ""
    print(f"{args.models} models x {args.params:,} parameters, {args.threads} threads, load {os.getloadavg()}")
    print("| compressor | seconds | CPU seconds | MB/s | bytes per message |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, comp in compressors():
        times = []
        for repeat in range(args.repeats + 1):
            gens = compress_streams(0, ("bench",), repeat, ids)
            start, cpu = time.perf_counter(), time.process_time()
            comp.roundtrip(x, gens)
            times.append((time.perf_counter() - start, time.process_time() - cpu))
        wall, cpu = sorted(times[1:])[len(times[1:]) // 2]
        line = (
            f"| {name}{tag} | {wall:.3f} | {cpu:.3f} | {megabytes / wall:,.0f} | {comp.message_bytes(args.params):,} |"
        )
        print(line)
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
