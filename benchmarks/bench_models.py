"""Training step time and peak memory against bag size N: PersAM beside ABMIL, in one run.

Both models use their default configuration (feature_dim 1024 as from a UNI-class encoder,
d_model 128, 2 layers, dropout 0.1), one bag per step, AdamW.

* Step time: PersAM and ABMIL steps alternate in one process and the fastest of several rounds
  counts, so load from other tenants hits both alike. Goal: PersAM / ABMIL <= 3 at every N.
* Peak memory: each (model, N) in a fresh process (peak RSS on CPU, peak allocated on CUDA). The
  memory an extra patch costs between consecutive sizes, relative to the first interval: 1.0 is
  linear, a quadratic model doubles it every time N doubles. Goal: <= 1.2 (linear).

CPU: N = 1k, 5k, 20k, and 100k for memory (the bag size a GPU must take). CUDA: up to 200k.
"""
from __future__ import annotations

import time

import torch

from benchmarks.common import Row
from persam_lib.models.base import ModelSettings
from persam_lib.models.cost import StepSpec, training_step
from persam_lib.models.cost import peak_memory_mb as cost_peak_memory_mb

FEATURE_DIM = 1024


def _spec(name: str, n: int, device: torch.device, checkpointing: bool = False, n_layers: int = 2) -> StepSpec:
    settings = ModelSettings(d_model=128, n_heads=4, n_layers=n_layers, checkpoint_activations=checkpointing)
    return StepSpec(name, n, FEATURE_DIM, settings, device=str(device))


def _setup(name: str, n: int, device: torch.device, checkpointing: bool = False, n_layers: int = 2):
    return training_step(_spec(name, n, device, checkpointing, n_layers))


def step_times(n: int, device: torch.device, rounds: int = 6) -> tuple[float, float]:
    """Fastest PersAM and ABMIL step (seconds) at bag size n, measured alternately."""
    persam, abmil = _setup("persam", n, device), _setup("abmil", n, device)
    persam(), abmil()  # warm-up
    best = {"persam": float("inf"), "abmil": float("inf")}
    for _ in range(rounds):
        for name, step in (("persam", persam), ("abmil", abmil)):
            start = time.perf_counter()
            step()
            best[name] = min(best[name], time.perf_counter() - start)
    return best["persam"], best["abmil"]


def peak_memory_mb(name: str, n: int, checkpointing: bool = False, n_layers: int = 2) -> float | None:
    """Peak memory (MB) of two steps in a fresh process (`persam_lib.models.cost.peak_memory_mb`); None if it failed."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peak = cost_peak_memory_mb(_spec(name, n, device, checkpointing, n_layers))
    if peak is None:
        print(f"  {name} at N={n}: failed, likely out of memory")
    return peak


def run() -> list[Row]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(2)
    timed = [1_000, 5_000, 20_000] + ([100_000, 200_000] if device.type == "cuda" else [])
    rows = []
    for n in timed:
        persam_s, abmil_s = step_times(n, device)
        rows.append(Row(f"N={n:>7}: PersAM step (ms) vs ABMIL step (ms), {device.type}", persam_s * 1000, abmil_s * 1000, "", "<= 3"))
    sizes = [1_000, 5_000, 20_000, 100_000] + ([200_000] if device.type == "cuda" else [])
    peaks = {n: peak_memory_mb("persam", n) for n in sizes}
    first_slope = None
    for previous, n in zip(sizes, sizes[1:]):
        if peaks[previous] is None or peaks[n] is None:
            break
        slope = (peaks[n] - peaks[previous]) / (n - previous) * 1024  # KB per extra patch
        first_slope = first_slope or slope
        rows.append(Row(f"PersAM memory per extra patch (KB), N {previous}->{n} vs first interval", slope, first_slope, "", "<= 1.2: linear"))
    if peaks[sizes[-1]] is not None:
        abmil_peak = peak_memory_mb("abmil", sizes[-1])
        if abmil_peak:
            rows.append(Row(f"N={sizes[-1]}: PersAM peak memory (MB) vs ABMIL peak memory (MB)", peaks[sizes[-1]], abmil_peak, "", "(information)"))
    n = 20_000 if device.type == "cpu" else sizes[-1]
    plain, checkpointed = peak_memory_mb("persam", n, n_layers=8), peak_memory_mb("persam", n, checkpointing=True, n_layers=8)
    if plain and checkpointed:
        rows.append(Row(f"N={n}, 8 layers: PersAM peak memory (MB), activation checkpointing vs none", checkpointed, plain, "", "(information)"))
    return rows


if __name__ == "__main__":
    from benchmarks.common import print_table

    print_table("models: training step against bag size", run())
