"""Multi-process training on PyTorch's own engine: torchrun + DistributedDataParallel.

`torchrun --nproc-per-node N -m posetune train ...` sets RANK / WORLD_SIZE / LOCAL_RANK; posetune
then joins the process group (gloo on CPU, nccl on CUDA), shards the data, and lets rank 0 alone
print, log, checkpoint and write the run folder. `posetune train --nproc N` runs torchrun for you.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> list[int]:
        """This rank's indices of n items (strided: every rank gets n/world, no padding)."""
        return list(range(self.rank, n, self.world))

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks."""
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        tdist.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        return bool(self.sum([float(flag)])[0]) if self.enabled else flag

    def gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's rows in rank order (sizes may differ by rank)."""
        if not self.enabled:
            return tensor
        size = torch.tensor([tensor.shape[0]])
        sizes = [torch.zeros_like(size) for _ in range(self.world)]
        tdist.all_gather(sizes, size)
        longest = int(max(s.item() for s in sizes))
        padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype)
        padded[: tensor.shape[0]] = tensor.cpu()
        parts = [torch.zeros_like(padded) for _ in range(self.world)]
        tdist.all_gather(parts, padded)
        return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])

    def unshard(self, tensor: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`shard`: rows gathered from every rank back into the original item order."""
        if not self.enabled:
            return tensor
        gathered = self.gather_rows(tensor)
        n = gathered.shape[0]
        order = [i for r in range(self.world) for i in range(r, n, self.world)]
        out = torch.empty_like(gathered)
        out[torch.tensor(order)] = gathered
        return out

    def barrier(self) -> None:
        if self.enabled:
            tdist.barrier()


def init_from_env(device_type: str) -> Dist:
    """Join the process group when launched by torchrun; a no-op for a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not tdist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        tdist.init_process_group(backend)
    return Dist(rank, world, local_rank)


def shutdown() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def launch(nproc: int, argv: list[str]) -> int:
    """Re-run this `posetune train` command under torchrun with ``nproc`` processes on this machine."""
    # "--": torchrun's parser reads every word, so posetune's `--log` would be an ambiguous abbreviation of
    # its --log-dir / --logs-specs; after "--" all of them are posetune's.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "--", "posetune", *argv]
    return subprocess.call(cmd)
