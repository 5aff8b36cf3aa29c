"""Training on several GPUs (or CPU processes) with DistributedDataParallel, launched by torchrun.

``torchrun --nproc_per_node=4 -m persam_lib.cli train ...`` starts one process per GPU; each
reads the launch from its environment (`from_environment`), takes its share of every batch of
bags, and DDP averages the gradients, so all ranks hold the same weights after every step.
The loss is normalised by the whole batch's weight, not each rank's share, so a step on W ranks
is the step a single process takes on the whole batch (same result up to float rounding).
Rank 0 writes every file; the others wait at barriers.

Nothing here is global: the `Distributed` value is passed to whatever needs it, and a single
process is just `Distributed()` (world size 1), which does nothing distributed at all.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in a distributed launch; world size 1 is a plain single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files and prints; the others compute and wait."""
        return self.rank == 0

    def device(self, requested: str) -> torch.device:
        """The device for this rank: ``auto`` → this rank's GPU when CUDA is present, else CPU;
        ``cuda`` → this rank's GPU; ``cuda:N`` → GPU N; ``cpu`` → the CPU.

        Asking for CUDA where there is none (a CPU-only PyTorch, no GPU visible, or GPU N beyond
        those present) is a ValueError that says to use ``--device auto`` or ``cpu`` — raised
        here, where training or explaining resolves its device before writing anything.
        """
        if requested == "auto":
            requested = "cuda" if torch.cuda.is_available() else "cpu"
        if requested.startswith("cuda"):
            check_cuda(requested)
        if requested == "cuda" and self.enabled:
            return torch.device("cuda", self.local_rank)
        return torch.device(requested)

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The model wrapped in DistributedDataParallel (gradients averaged over ranks), or as it is."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items`` (every world_size-th, starting at its rank)."""
        return list(items[self.rank :: self.world_size])

    def sum(self, values: Sequence[float], device: torch.device) -> list[float]:
        """Element-wise sum of ``values`` over all ranks (the values themselves in a single process)."""
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def check_cuda(requested: str = "cuda") -> None:
    """Raise a ValueError saying why ``requested`` ("cuda" or "cuda:N") cannot be used on this machine."""
    if not torch.cuda.is_available():
        why = f"this PyTorch ({torch.__version__}) was built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible to this process"
        raise ValueError(f"The device {requested!r} was asked for (--device or the 'device' option), but CUDA is not available on this machine ({why}). Use --device auto (CUDA when present, else CPU) or --device cpu.")
    _, _, index = requested.partition(":")
    count = torch.cuda.device_count()
    if index and int(index) >= count:
        raise ValueError(f"The device {requested!r} was asked for, but this machine has {count} CUDA GPU(s) (cuda:0 to cuda:{count - 1}). Use --device cuda, --device auto or --device cpu.")


def from_environment() -> Distributed:
    """The launch torchrun describes in RANK, WORLD_SIZE and LOCAL_RANK; a single process without them."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    try:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    except KeyError as err:
        raise ValueError(f"WORLD_SIZE={world_size} but {err.args[0]} is not set: launch distributed training with torchrun") from err
    return Distributed(rank, world_size, local_rank)


@contextmanager
def distributed_session() -> Iterator[Distributed]:
    """Join the process group of a torchrun launch (NCCL with GPUs, gloo on CPU) and leave it at the end."""
    context = from_environment()
    if not context.enabled or dist.is_initialized():
        yield context
        return
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(context.local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    try:
        yield context
    finally:
        dist.destroy_process_group()
