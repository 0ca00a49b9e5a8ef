"""Time of the compiled hash-grid kernel against its torch reference, forward and forward + backward.

One command (a quiet machine; the grids are the CPU preset's: ``presets.fast_cpu_field``)::

    .venv/bin/python benchmarks/kernel_speed.py --threads 1 2 --points 24576

Each row: the median over ``--repeats`` calls of the canonical grid (8 levels, 2^15 entries), the deformation
grid (4 levels, 2^12) and the proposal network's grid (5 levels, 2^14) on ``--points`` random points (the samples
of one 1024-ray training step: 24 field samples a ray; the proposal network sees 48), with the largest
difference between the two paths' outputs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sahs_nerfstudio.compat.encodings import TorchHashEncoding
from sahs_nerfstudio.kernels.hash_grid import CompiledHashEncoding, load_kernel

GRIDS = {
    "canonical (8 levels, 2^15)": dict(num_levels=8, min_res=16, max_res=512, log2_hashmap_size=15),
    "deformation (4 levels, 2^12)": dict(num_levels=4, min_res=16, max_res=64, log2_hashmap_size=12),
    "proposal (5 levels, 2^14)": dict(num_levels=5, min_res=16, max_res=128, log2_hashmap_size=14),
}


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch CPU thread counts to time")
    parser.add_argument("--points", type=int, default=24 * 1024, help="points per call")
    parser.add_argument("--repeats", type=int, default=15, help="calls timed per measurement (median)")
    args = parser.parse_args()
    if load_kernel() is None:
        raise SystemExit("kernel_speed: the compiled kernel could not be built here (see the line above)")
    print(
        "| grid | threads | torch fwd (ms) | kernel fwd (ms) | torch fwd+bwd (ms) | kernel fwd+bwd (ms) | "
        "speed-up fwd+bwd | max abs diff |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, grid in GRIDS.items():
        torch.manual_seed(0)
        ref = TorchHashEncoding(implementation="torch", **grid)
        fast = CompiledHashEncoding(implementation="torch", **grid)
        fast.load_state_dict(ref.state_dict())
        x = torch.rand(args.points, 3, requires_grad=True)
        upstream = torch.randn(args.points, ref.get_out_dim())
        diff = float((ref(x) - fast(x)).abs().max())
        for threads in args.threads:
            torch.set_num_threads(threads)
            cells = []
            for encoding in (ref, fast):

                def forward(enc=encoding, x=x) -> None:
                    with torch.no_grad():
                        enc(x)

                def both(enc=encoding, x=x, upstream=upstream) -> None:
                    (enc(x) * upstream).sum().backward()

                cells.append((_median_ms(forward, args.repeats), _median_ms(both, args.repeats)))
            (rf, rb), (kf, kb) = cells
            print(f"| {name} | {threads} | {rf:.1f} | {kf:.1f} | {rb:.1f} | {kb:.1f} | {rb / kb:.1f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
