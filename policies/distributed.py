"""Training on many processes: PyTorch DistributedDataParallel under ``torchrun``.

``robot-runtime pretrain`` and ``finetune`` run unchanged under ``torchrun`` (one machine or
many): :meth:`World.from_env` reads the rank and world size torchrun sets and joins its process
group (NCCL on GPUs, gloo on CPUs); without torchrun it is a world of one and nothing changes.

The global batch is the same whatever the world size: every rank draws the same global batch
of windows from the same seeded generator (:meth:`~policies.bc.WindowSampler.draw`), and each
computes the windows of the episodes it owns (episode ``i`` belongs to rank ``i % world``). Its
loss is scaled so that DDP's gradient average is the single-process gradient of the whole batch
(:class:`BatchLoss`), so a run on two processes follows a run on one up to float rounding, and a
job resumes on any number of processes. Rank 0 alone writes checkpoints, the train state and
progress.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
from torch import nn

from policies.errors import PolicyError

#: how long a rank waits for the others at a collective before the job fails (s): a killed
#: rank usually surfaces at once as a closed connection; a hung one at this timeout
COLLECTIVE_TIMEOUT_S = 300.0


class DistributedError(PolicyError):
    """The process group failed: a rank died, hung or could not join."""


def env_rank_and_size() -> tuple[int, int]:
    """(rank, world size) as torchrun sets them in the environment; (0, 1) without torchrun."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


@dataclass
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the one that writes files and progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @classmethod
    def from_env(cls, device: torch.device) -> "World":
        """The world torchrun describes in the environment (``RANK``, ``WORLD_SIZE``,
        ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``), its process group joined; a world of
        one without it."""
        rank, size = env_rank_and_size()
        if size <= 1:
            return cls()
        import torch.distributed as dist  # noqa: PLC0415

        local = int(os.environ.get("LOCAL_RANK", "0"))
        backend = "nccl" if device.type == "cuda" else "gloo"
        if not dist.is_initialized():
            try:
                dist.init_process_group(backend, timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
            except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError/ValueError/DistBackendError
                raise DistributedError(f"rank {rank} of {size} could not join the process group "
                                       f"({backend} at {os.environ.get('MASTER_ADDR')}:"
                                       f"{os.environ.get('MASTER_PORT')}): {exc}") from exc
        return cls(rank, size, local, backend)

    def device(self, device: torch.device) -> torch.device:
        """The device of this rank: its local GPU when training on CUDA."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" and self.distributed else device

    def owns(self, episode: int) -> bool:
        """Whether this rank computes the windows of ``episode``."""
        return episode % self.size == self.rank

    def sum(self, value: float, device: torch.device) -> float:
        """The sum of ``value`` over every rank."""
        if not self.distributed:
            return value
        import torch.distributed as dist  # noqa: PLC0415

        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return float(t.item())

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist  # noqa: PLC0415

            dist.barrier()

    def close(self) -> None:
        if self.distributed:
            import torch.distributed as dist  # noqa: PLC0415

            if dist.is_initialized():
                dist.destroy_process_group()

    def describe(self) -> dict:
        """What the provenance records of the world a job trained in."""
        return {"world_size": self.size, "backend": self.backend or "none",
                "nodes": int(os.environ.get("GROUP_WORLD_SIZE", os.environ.get("NNODES", "1")) or 1)}


class BatchLoss(nn.Module):
    """The loss of this rank's share of a global batch, as the module DDP wraps (DDP syncs the
    gradients of what runs through its forward).

    ``forward`` returns ``world x mean_share x share / batch``: DDP averages the gradients over the
    world, so the step's gradient is that of the mean over the whole global batch. A rank with no
    window in a batch still takes part (a zero loss on every trained weight).
    """

    def __init__(self, model: nn.Module, loss_fn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, proprio, frames, index, actions, weight: float) -> torch.Tensor:
        if len(proprio) == 0:
            return sum((p * 0.0).sum() for p in self.model.parameters() if p.requires_grad)
        return self.loss_fn(self.model, proprio, frames, index, actions) * weight
