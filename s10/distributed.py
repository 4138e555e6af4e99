"""What the ranks of a run must agree on when they share neither a disk nor a fate.

Nodes may not share a file system (each has its own `--out` and data copy), so whatever a resume reads from disk is
read by global rank 0 and broadcast: `RankZeroCheckpointIO` (a Lightning CheckpointIO plugin) does it for
`fabric.load`. An error that only some ranks meet (a corrupt data copy on one node) would leave the others waiting in
the next collective until its timeout: `first_error` gathers every rank's error so that all of them stop together,
with the same message.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from lightning.fabric.plugins import TorchCheckpointIO


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def leave() -> None:
    """Leave the process group, on every rank, before the process exits (torch.distributed's own advice). Left to the
    interpreter's exit, gloo's teardown may find a peer already gone, and abort the process instead of letting it
    exit with its own code."""
    if _initialized():
        dist.destroy_process_group()


def gather_objects(obj: Any) -> list:
    """Every rank's `obj` (picklable), in rank order, on every rank."""
    if not _initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def first_error(fabric, error: str | None) -> str | None:
    """Collective: the first rank's error (with where it happened, when the run has several nodes), or None if no
    rank had one. Called on every rank, with that rank's error or None."""
    nodes = getattr(fabric.strategy, "num_nodes", 1)
    where = f"node {fabric.node_rank}, rank {fabric.global_rank}: " if nodes > 1 else ""
    errors = gather_objects(f"{where}{error}" if error else None)
    return next((e for e in errors if e), None)


def gather_uneven(fabric, tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate each rank's tensor (their lengths may differ by one) in rank order, on every rank."""
    if fabric.world_size == 1:
        return tensor
    sizes = [int(n) for n in gather_objects(len(tensor))]
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[: len(tensor)] = tensor
    gathered = fabric.all_gather(padded)
    return torch.cat([gathered[r, :n] for r, n in enumerate(sizes)])


class RankZeroCheckpointIO(TorchCheckpointIO):
    """`fabric.load` reads the checkpoint on global rank 0 only and broadcasts it; every rank then restores from the
    same dict. Only rank 0 writes checkpoints (Fabric's DDP strategy), so on nodes without a shared disk the other
    nodes have no file to read."""

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        if not _initialized():
            return super().load_checkpoint(path, map_location="cpu", weights_only=weights_only)
        holder = [super().load_checkpoint(path, map_location="cpu", weights_only=weights_only)
                  if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]
