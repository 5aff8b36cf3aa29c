"""`make gpu-check`: everything the GPU path has to show, as one prepared command and one table.

GPU time comes in minutes, so the checks run as one plan that finishes within eight minutes on one
GPU and writes one table (``gpu_check.md`` and ``gpu_check.json`` in ``--out``):

* ``tests/test_gpu.py`` (bf16 autocast for every model, fused attention, large bags);
* PersAM beside ABMIL: training-step time (bf16 on CUDA) and peak memory against bag size, up to
  200k patches; a 100k-patch bag's training step on its own;
* the published PersAM (``persam_paper``) at the bag sizes where it fits;
* encoder throughput (patches/s) for ``resnet50_trunc``, ``vit_s16`` and a ViT-L preset (UNI's
  architecture), with random weights: nothing is downloaded, the cost is the architecture's;
* the image models' images/s, training and inference, beside the plain CNN;
* one DistributedDataParallel training step on two processes (two GPUs with NCCL when there are
  two, gloo on CPU in the dry run), checking both ranks hold the same weights after it.

``--dry`` (``make gpu-check DRY=1``) runs the same plan on the CPU at toy sizes; the tests run it.
Each part runs on its own: one that fails (out of memory, say) is a ``failed`` row with the
error and the rest go on; the command exits 1 when any part failed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
GPU_TESTS_TIMEOUT_S = 240  # the part of the 8 minutes the GPU tests may take


@dataclass(frozen=True)
class Plan:
    """What the check measures, and at which sizes."""

    device: str
    dry: bool
    model_sizes: tuple[int, ...]  # PersAM vs ABMIL step time
    memory_sizes: tuple[int, ...]  # peak memory, measured one after another in one worker process
    big_bag: int
    paper_sizes: tuple[int, ...]
    encoders: tuple[tuple[str, dict], ...]  # (name, create_encoder options)
    encoder_patches: int
    image_models: tuple[str, ...]
    image_rounds: int
    ddp_backend: str  # "nccl", "gloo", or "" (not enough GPUs)


def make_plan(dry: bool) -> Plan:
    """The GPU plan, or with ``dry`` the same parts at toy sizes on the CPU."""
    if dry:
        return Plan("cpu", True, (128, 256), (256,), 1024, (128,), (("resnet50_trunc", {}), ("vit_s16", {}), ("uni", {"tiny": True})), 4,
                    ("persam",), 1, "gloo")
    gpus = torch.cuda.device_count()
    return Plan("cuda", False, (1_000, 10_000, 100_000, 200_000), (10_000, 100_000, 200_000), 100_000, (1_000, 10_000, 50_000),
                (("resnet50_trunc", {}), ("vit_s16", {}), ("uni", {})), 512, ("persam", "mma_mgmu", "chexradinet", "cnn_concat"), 3, "nccl" if gpus >= 2 else "")


@dataclass
class CheckRow:
    """One line of the table."""

    part: str
    measure: str
    value: str
    status: str = "ok"  # ok, failed, skipped
    seconds: float = 0.0


@dataclass
class CheckReport:
    plan: Plan
    rows: list[CheckRow] = field(default_factory=list)
    device_name: str = ""

    @property
    def failed(self) -> list[CheckRow]:
        return [r for r in self.rows if r.status == "failed"]

    def markdown(self) -> str:
        lines = [f"# gpu-check ({'dry run, CPU, toy sizes' if self.plan.dry else self.device_name})", "",
                 "| part | measure | value | status | s |", "|---|---|---|---|---|"]
        lines += [f"| {r.part} | {r.measure} | {r.value} | {r.status} | {r.seconds:.1f} |" for r in self.rows]
        return "\n".join(lines) + "\n"


def _part(report: CheckReport, name: str, fn: Callable[[], list[CheckRow]]) -> None:
    """Run one part; its rows, or one failed row naming the error (the rest go on)."""
    start = time.perf_counter()
    try:
        rows = fn()
    except Exception as exc:  # noqa: BLE001 - a part that fails is a result, not the end of the check
        rows = [CheckRow(name, "error", f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}", "failed")]
        traceback.print_exc()
    took = time.perf_counter() - start
    for row in rows:
        row.seconds = row.seconds or took
    report.rows += rows
    print(f"[gpu-check] {name}: {len(rows)} row(s) in {took:.1f} s" + (" (FAILED)" if any(r.status == "failed" for r in rows) else ""), flush=True)


# --------------------------------------------------------------------------------------------
# The parts


def gpu_tests(plan: Plan) -> list[CheckRow]:
    """``pytest tests/test_gpu.py``: its summary line (on a machine without CUDA they skip)."""
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_gpu.py")], cwd=ROOT, capture_output=True, text=True, timeout=GPU_TESTS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return [CheckRow("tests/test_gpu.py", "pytest", f"stopped after {GPU_TESTS_TIMEOUT_S} s", "failed")]
    summary = next((line for line in reversed(done.stdout.splitlines()) if " in " in line and ("passed" in line or "skipped" in line or "failed" in line)), done.stdout[-200:])
    status = "failed" if done.returncode not in (0, 5) else ("skipped" if "skipped" in summary and "passed" not in summary else "ok")
    return [CheckRow("tests/test_gpu.py", "pytest", summary.strip("= "), status)]


def model_steps(plan: Plan) -> list[CheckRow]:
    """PersAM and ABMIL training steps at each bag size, alternately timed, and their ratio."""
    from persam_lib.models.cost import step_costs

    rows = []
    for n in plan.model_sizes:
        costs = {c.model: c for c in step_costs(["persam", "abmil"], [n], device=plan.device, memory=False)}
        p, a = costs["persam"].step_ms, costs["abmil"].step_ms
        rows.append(CheckRow("PersAM vs ABMIL step", f"N={n:,}: PersAM / ABMIL step (ms)", f"{p:.1f} / {a:.1f} = {p / a:.2f}× (goal ≤ 3)"))
    return rows


def model_memory(plan: Plan) -> list[CheckRow]:
    """Peak memory of two training steps of each model and size, measured one after another in one
    worker process (`peak_memories_mb`; a new one after running out of memory), smallest bags first."""
    from persam_lib.models.cost import StepSpec, peak_memories_mb

    models = ("persam", "abmil")
    sizes = sorted(plan.memory_sizes)
    measured = iter(peak_memories_mb([StepSpec(m, n, device=plan.device) for n in sizes for m in models]))
    rows = []
    for n in sizes:
        peaks = {m: next(measured) for m in models}
        shown = " / ".join("out of memory" if v is None else f"{v:,.0f}" for v in peaks.values())
        rows.append(CheckRow("PersAM vs ABMIL memory", f"N={n:,}: peak MB, PersAM / ABMIL", shown, "ok" if peaks["persam"] is not None else "failed"))
    return rows


def big_bag(plan: Plan) -> list[CheckRow]:
    """One PersAM training step on a bag of ``plan.big_bag`` patches."""
    from persam_lib.models.cost import StepSpec, fastest_seconds, training_step

    step = training_step(StepSpec("persam", plan.big_bag, device=plan.device))
    return [CheckRow("large bag", f"PersAM training step, {plan.big_bag:,} patches", f"{fastest_seconds(step, rounds=2) * 1000:.0f} ms")]


def paper_steps(plan: Plan) -> list[CheckRow]:
    """The published PersAM's step time where it fits (its attention is quadratic in the bag)."""
    from persam_lib.models.cost import StepSpec, fastest_seconds, training_step

    rows = []
    for n in plan.paper_sizes:
        try:
            step = training_step(StepSpec("persam_paper", n, device=plan.device))
            rows.append(CheckRow("persam_paper", f"N={n:,}: training step", f"{fastest_seconds(step, rounds=2) * 1000:.0f} ms"))
        except torch.OutOfMemoryError:
            rows.append(CheckRow("persam_paper", f"N={n:,}: training step", "does not fit (out of memory)", "skipped"))
            torch.cuda.empty_cache()
    return rows


def encoder_throughput(plan: Plan) -> list[CheckRow]:
    """Patches/s of each encoder, random weights, 224-pixel patches (bf16 on CUDA)."""
    from persam_lib.features.encoders import create_encoder
    from persam_lib.features.presets import preset_encoder

    rows = []
    patches = np.random.default_rng(0).integers(0, 256, (plan.encoder_patches, 224, 224, 3), dtype=np.uint8)
    for name, options in plan.encoders:
        tiny = bool(options.get("tiny"))
        encoder = preset_encoder(name, random_init=True, device=plan.device, tiny=True) if tiny else create_encoder(name, random_init=True, device=plan.device)
        encoder(patches[: min(8, len(patches))])  # warm-up
        start = time.perf_counter()
        for first in range(0, len(patches), 64):
            encoder(patches[first : first + 64])
        if plan.device == "cuda":
            torch.cuda.synchronize()
        rate = len(patches) / (time.perf_counter() - start)
        label = f"{name}{' (toy-size twin)' if tiny else ''}"
        rows.append(CheckRow("encoders", f"{label}: patches/s, 224 px", f"{rate:,.0f}"))
    return rows


def image_models(plan: Plan) -> list[CheckRow]:
    """Each image model's images/s, training and inference, beside the plain CNN's."""
    from benchmarks.bench_images import images_per_second

    rows = []
    for name in plan.image_models:
        rates = images_per_second(name, torch.device(plan.device), rounds=plan.image_rounds)
        for kind, (model, cnn) in rates.items():
            rows.append(CheckRow("image models", f"{name} {kind}: images/s (plain CNN)", f"{model:,.0f} ({cnn:,.0f})"))
    return rows


def ddp_step(plan: Plan) -> list[CheckRow]:
    """One DDP training step of PersAM on two processes; both ranks must end with the same weights."""
    if not plan.ddp_backend:
        return [CheckRow("DDP", "two-process training step", f"needs two GPUs ({torch.cuda.device_count()} here)", "skipped")]
    import torch.multiprocessing as mp

    results = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(_ddp_worker, args=(2, plan.ddp_backend, _free_port(), results), nprocs=2, start_method="spawn", join=True)
    sums = [results.get() for _ in range(2)]
    same = abs(sums[0] - sums[1]) <= 1e-4 * max(1.0, abs(sums[0]))
    return [CheckRow("DDP", f"two-process training step ({plan.ddp_backend})", f"weights after the step: {sums[0]:.6f} / {sums[1]:.6f}", "ok" if same else "failed")]


def _ddp_worker(rank: int, world: int, backend: str, port: int, results) -> None:
    import torch.distributed as dist

    from persam_lib.models import Batch, ModelConfig, create_model

    import warnings

    warnings.filterwarnings("ignore", message="Grad strides do not match")  # DDP's performance hint for PersAM's token parameters
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        device = torch.device(f"cuda:{rank}") if backend == "nccl" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.manual_seed(0)
        model = create_model("persam", ModelConfig(feature_dim=64, n_classes=2, field_cardinalities=(0, 2, 2, 0), d_model=32, n_heads=4)).to(device)
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank] if device.type == "cuda" else None)
        optimiser = torch.optim.AdamW(wrapped.parameters())
        torch.manual_seed(rank + 1)  # each rank its own bag, as each takes its share of a batch
        n = 4096 if device.type == "cuda" else 512
        coords = torch.stack([torch.arange(n) % 64, torch.arange(n) // 64], -1)[None] * 256
        batch = Batch(torch.randn(1, n, 64), torch.ones(1, n, dtype=torch.bool), coords, torch.tensor([[1, 1, 2, 1]]), torch.zeros(1, 4)).to(device)
        wrapped(batch).logits.float().sum().backward()
        optimiser.step()
        results.put(float(sum(p.detach().double().sum() for p in model.parameters())))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    """A free local TCP port for the process group's rendezvous."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PARTS: tuple[tuple[str, Callable[[Plan], list[CheckRow]]], ...] = (
    ("tests/test_gpu.py", gpu_tests), ("PersAM vs ABMIL step", model_steps), ("PersAM vs ABMIL memory", model_memory),
    ("large bag", big_bag), ("persam_paper", paper_steps), ("encoders", encoder_throughput), ("image models", image_models), ("DDP", ddp_step),
)


def run_check(plan: Plan, out_dir: Path) -> CheckReport:
    """Every part of ``plan``; the table written atomically into ``out_dir``."""
    from persam_lib.io.atomic import write_json_atomic, write_text_atomic

    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, os.cpu_count() or 1) if plan.dry else (os.cpu_count() or 1))
    report = CheckReport(plan, device_name=torch.cuda.get_device_name(0) if plan.device == "cuda" else "cpu")
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        for name, fn in PARTS:
            _part(report, name, lambda fn=fn: fn(plan))
            # the table so far, after every part: a run cut off at its time limit keeps what it measured
            write_text_atomic(out_dir / "gpu_check.md", report.markdown())
            write_json_atomic(out_dir / "gpu_check.json", {"plan": asdict(plan), "device": report.device_name, "rows": [asdict(r) for r in report.rows]})
    finally:
        torch.set_num_threads(threads)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry", action="store_true", help="the same plan on the CPU at toy sizes (make gpu-check DRY=1)")
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "gpu-check", help="folder for gpu_check.md and gpu_check.json")
    args = parser.parse_args(argv)
    if not args.dry and not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU here; run `make gpu-check DRY=1` for the dry run on the CPU", file=sys.stderr)
        return 2
    report = run_check(make_plan(args.dry), args.out)
    print(report.markdown())
    print(f"gpu-check: {len(report.rows)} row(s), {len(report.failed)} failed -> {args.out / 'gpu_check.md'}")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
