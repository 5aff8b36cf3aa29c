"""Training step time and peak memory against bag size N, PersAM beside ABMIL in one run.

CPU: N = 1k, 5k, 20k patches (GPU when present: up to 100k). Reported per N: PersAM step time /
ABMIL step time (goal <= 3) and the growth of peak memory from one N to the next relative to the
growth of N (1.0 = linear).
"""
from __future__ import annotations

import resource
import time

import torch

from benchmarks.common import Row


def _step_seconds_and_peak_mb(name: str, n: int, device: torch.device, checkpointing: bool) -> tuple[float, float]:
    from persam_lib.models import Batch, ModelConfig, create_model

    torch.manual_seed(0)
    config = ModelConfig(feature_dim=1024, n_classes=2, field_cardinalities=(0, 2, 2, 0), d_model=128, n_heads=4, n_layers=2, checkpoint_activations=checkpointing)
    model = create_model(name, config).to(device)
    optimiser = torch.optim.AdamW(model.parameters())
    side = int(n**0.5) + 1
    idx = torch.arange(n)
    batch = Batch(torch.randn(1, n, 1024), torch.ones(1, n, dtype=torch.bool), torch.stack([idx % side, idx // side], -1)[None] * 256, torch.ones(1, 4, dtype=torch.long), torch.zeros(1, 4)).to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def step():
        with autocast:
            loss = model(batch).logits.float().sum()
        loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return min(times), peak


def _measure(job: tuple[str, int, bool]) -> tuple[float, float]:
    """One measurement in a fresh process, so its peak memory is its own."""
    name, n, checkpointing = job
    torch.set_num_threads(2)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return _step_seconds_and_peak_mb(name, n, device, checkpointing)


def run() -> list[Row]:
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    device = "cuda" if torch.cuda.is_available() else "cpu"
    sizes = [1_000, 5_000, 20_000] + ([50_000, 100_000] if device == "cuda" else [])
    rows, previous = [], None
    for n in sizes:
        results = {}
        for name, checkpointing in (("persam", True), ("abmil", False)):
            try:
                with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
                    results[name] = pool.submit(_measure, (name, n, checkpointing)).result()
            except Exception as err:  # out of memory kills the worker: report it and stop growing N
                print(f"  {name} at N={n}: failed ({type(err).__name__}), likely out of memory")
                return rows
        (persam_s, persam_mb), (abmil_s, _) = results["persam"], results["abmil"]
        rows.append(Row(f"N={n:>6}: PersAM step (ms) vs ABMIL step (ms), {device}", persam_s * 1000, abmil_s * 1000, "", "ratio <= 3"))
        if previous is not None:
            rows.append(Row(f"N={n:>6}: PersAM peak memory (MB) growth / bag growth x{n // previous[0]}", persam_mb / previous[1], n / previous[0], "", "<= 1: linear or better"))
        previous = (n, persam_mb)
    return rows


if __name__ == "__main__":
    from benchmarks.common import print_table

    print_table("models: step time against bag size", run())
