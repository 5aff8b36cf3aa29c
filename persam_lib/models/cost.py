"""What a model's training step costs against bag size: time and peak memory, measured.

The book's comparison of the two PersAMs and the benchmarks (`make bench`) measure the same way:
one synthetic bag of ``n`` patches with a four-field record, one forward and backward pass and an
AdamW step (fused, as in training). Time is the fastest of a few rounds after a warm-up (load from other tenants inflates
the slower ones). Peak memory is measured in a worker process of its own, since a process's peak
resident size only grows: on CPU the peak resident size after set-up (Linux: reset through
/proc/self/clear_refs, so one worker measures one spec after another), on CUDA the peak allocated.
"""
from __future__ import annotations

import resource
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import torch

from persam_lib.models.base import Batch, ModelConfig, ModelSettings

RECORD_CARDINALITIES = (0, 2, 2, 0)  # a numeric, two binary and a numeric field, like the demo cohort


@dataclass(frozen=True)
class StepSpec:
    """One measured training step: which model, on how many patches of how many features."""

    model: str
    n_patches: int
    feature_dim: int = 1024
    settings: ModelSettings = ModelSettings(d_model=128)
    n_classes: int = 2
    device: str = "cpu"


def training_step(spec: StepSpec) -> Callable[[], None]:
    """A function that runs one training step of ``spec`` (bf16 autocast on CUDA), with the
    optimiser training uses (`persam_lib.train.loop.make_optimiser`: AdamW as one fused kernel)."""
    from persam_lib.models import create_model
    from persam_lib.train.loop import TrainConfig, make_optimiser

    torch.manual_seed(0)
    device = torch.device(spec.device)
    config = ModelConfig.from_settings(spec.settings, feature_dim=spec.feature_dim, n_classes=spec.n_classes, field_cardinalities=RECORD_CARDINALITIES)
    model = create_model(spec.model, config).to(device).train()
    optimiser = make_optimiser(model, TrainConfig())
    n = spec.n_patches
    side = int(n**0.5) + 1
    index = torch.arange(n)
    coords = torch.stack([index % side, index // side], -1)[None] * 256
    batch = Batch(torch.randn(1, n, spec.feature_dim), torch.ones(1, n, dtype=torch.bool), coords, torch.tensor([[1, 1, 2, 1]]), torch.zeros(1, 4)).to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def step() -> None:
        with autocast:
            loss = model(batch).logits.float().sum()
        loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def fastest_seconds(step: Callable[[], None], rounds: int = 4, *, warm_up: bool = True) -> float:
    """The fastest of ``rounds`` calls of ``step``, after one warm-up call (``warm_up``)."""
    if warm_up:
        step()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return best


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _give_back_freed_memory() -> None:
    """Return freed heap memory to the system (glibc's malloc_trim), so the resident size after
    one measurement is not the floor of the next; elsewhere nothing (one spec per process then)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _peak_in_this_process(spec: StepSpec) -> float:
    torch.set_num_threads(2)
    _give_back_freed_memory()
    step = training_step(spec)
    if spec.device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    elif Path("/proc/self/clear_refs").exists():
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident size
    step()
    step()
    if spec.device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    if Path("/proc/self/status").exists():
        return _status_mb("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory_mb(spec: StepSpec) -> float | None:
    """Peak memory (MB) of two training steps of ``spec`` in a fresh process; None when the
    process failed (running out of memory kills it)."""
    return peak_memories_mb([spec])[0]


def peak_memories_mb(specs: list[StepSpec]) -> list[float | None]:
    """`peak_memory_mb` of each spec, measured one after the other in one fresh worker process
    (starting one costs seconds: torch's import), its freed memory given back to the system before
    each (`_give_back_freed_memory`; on Linux, where the peak can be reset). A spec whose process
    fails (out of memory) gets None and the next starts a new process. In the order given: smallest
    bags first keeps what one leaves behind below the next one's peak."""
    shared = Path("/proc/self/clear_refs").exists()
    peaks: list[float | None] = []
    pool: ProcessPoolExecutor | None = None
    try:
        for spec in specs:
            if pool is None:
                pool = ProcessPoolExecutor(1, mp_context=get_context("spawn"))
            try:
                peaks.append(pool.submit(_peak_in_this_process, spec).result())
            except Exception:  # noqa: BLE001 - out of memory, or a killed worker: no measurement
                peaks.append(None)
                pool.shutdown(wait=False, cancel_futures=True)
                pool = None
            if not shared and pool is not None:  # the peak cannot be reset: a process per spec
                pool.shutdown()
                pool = None
    finally:
        if pool is not None:
            pool.shutdown()
    return peaks


@dataclass(frozen=True)
class StepCost:
    """The measured cost of one training step."""

    model: str
    n_patches: int
    step_ms: float
    peak_mb: float | None


def step_costs(models: list[str], sizes: list[int], *, settings: ModelSettings = ModelSettings(), feature_dim: int = 1024, device: str = "cpu", memory: bool = True) -> list[StepCost]:
    """Step time (ms) and peak memory (MB) of each model at each bag size; the models are timed
    alternately at each size, so load from other tenants hits them alike."""
    specs, times = [], []
    for n in sorted(sizes):
        at_size = [StepSpec(m, n, feature_dim, settings, device=device) for m in models]
        steps = [training_step(s) for s in at_size]
        for step in steps:  # warm-up
            step()
        best = [float("inf")] * len(steps)
        for _ in range(3):
            best = [min(b, fastest_seconds(s, rounds=1, warm_up=False)) for b, s in zip(best, steps)]
        specs += at_size
        times += best
    peaks = peak_memories_mb(specs) if memory else [None] * len(specs)
    return [StepCost(s.model, s.n_patches, t * 1000, peak) for s, t, peak in zip(specs, times, peaks)]

