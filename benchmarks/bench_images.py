"""Images per second on 2-D images, training and inference, every image model beside the plain CNN.

Each model at its default image configuration (128 × 128 grey input, 16-pixel patches, d_model 64)
with a record of four fields. Training: a step of 16 images with AdamW; inference: eval mode, 64
images per forward. The model and the plain CNN alternate in one process and the fastest of
several rounds counts, so load from other tenants hits both alike; the ratio is the model's
throughput relative to the plain CNN (1.0: as fast). Goal: every model that reads the image keeps
at least a quarter of the plain CNN's throughput (its fusion and attention cost at most 4×).
On CUDA the same under bf16 autocast.
"""
from __future__ import annotations

import time

import torch

from benchmarks.common import Row

IMAGE_SIZE = 128
MODELS = ("persam", "mma_mgmu", "chexradinet", "cnn_concat", "clinical_only")


def _steps(name: str, device: torch.device, train_batch: int = 16, infer_batch: int = 64):
    from persam_lib.models import Batch, ModelConfig, create_model

    torch.manual_seed(0)
    config = ModelConfig(feature_dim=1, n_classes=2, field_cardinalities=(0, 2, 2, 0), input_kind="image", image_size=IMAGE_SIZE, grid_cell=16)
    model = create_model(name, config).to(device)
    optimiser = torch.optim.AdamW(model.parameters())
    batch = lambda b: Batch.of_images(torch.randn(b, 1, IMAGE_SIZE, IMAGE_SIZE), torch.tensor([[1, 1, 2, 1]] * b), torch.zeros(b, 4)).to(device)  # noqa: E731
    train_data, infer_data = batch(train_batch), batch(infer_batch)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def train() -> None:
        model.train()
        with autocast:
            loss = model(train_data).logits.float().sum()
        loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
        sync()

    def infer() -> None:
        model.eval()
        with torch.no_grad(), autocast:
            model(infer_data)
        sync()

    return train, infer


def images_per_second(name: str, device: torch.device, rounds: int = 5) -> dict[str, tuple[float, float]]:
    """{"train"/"inference": (model's images/s, plain CNN's images/s)}, measured alternately."""
    steps = {"model": _steps(name, device), "cnn": _steps("cnn", device)}
    sizes = {"train": 16, "inference": 64}
    best = {(who, kind): float("inf") for who in steps for kind in sizes}
    for who in steps:  # warm-up
        for fn in steps[who]:
            fn()
    for _ in range(rounds):
        for kind, index in (("train", 0), ("inference", 1)):
            for who in steps:
                start = time.perf_counter()
                steps[who][index]()
                best[who, kind] = min(best[who, kind], time.perf_counter() - start)
    return {kind: (sizes[kind] / best["model", kind], sizes[kind] / best["cnn", kind]) for kind in sizes}


def run() -> list[Row]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for name in MODELS:
        rates = images_per_second(name, device)
        goal = ">= 0.25" if name != "clinical_only" else ""  # the record alone reads no pixels
        for kind, (model_rate, cnn_rate) in rates.items():
            rows.append(Row(f"{name} vs cnn: {kind}, {IMAGE_SIZE}px, {device.type} (images/s)", model_rate, cnn_rate, "", goal))
    return rows
