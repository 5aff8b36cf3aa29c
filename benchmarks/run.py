"""Run every benchmark and print one table of ratios per benchmark: `python -m benchmarks.run`."""
from __future__ import annotations

import sys

from benchmarks import bench_explain, bench_extract, bench_images, bench_models, bench_persam_paper, bench_sweep, bench_tissue
from benchmarks.common import print_table

BENCHMARKS = {
    "extract": (bench_extract, "feature extraction (one core per process)"),
    "tissue": (bench_tissue, "tissue mask + patch grid against CLAM-like segmentation, on a real H&E slide"),
    "models": (bench_models, "models: training step against bag size"),
    "persam_paper": (bench_persam_paper, "the published PersAM beside ours: training step and memory against bag size"),
    "explain": (bench_explain, "explain: altered records and heatmaps"),
    "sweep": (bench_sweep, "sweeps: points in parallel"),
    "images": (bench_images, "2-D images: images per second, training and inference, against the plain CNN"),
}


def main(names: list[str]) -> int:
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; available: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    for name in names or list(BENCHMARKS):
        module, title = BENCHMARKS[name]
        print_table(title, module.run())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
