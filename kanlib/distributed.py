"""The process group that `fit(..., distributed=True)` trains in: the launch check, each rank's device and
shard of a batch, and the few collectives fit needs, each giving the same result on every rank.

Every rank holds the whole data set and the same model; a step's batch is split into `world_size` contiguous
shards, rank r computes on shard r, and torch's DistributedDataParallel averages the gradients. Collectives of
small tensors are all-reductions of zero-padded rows (one row per rank), which gloo and NCCL both provide on
their devices and which leave each rank's values exact.
"""
from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["TrainingGroup", "training_group", "LAUNCH_HINT", "device_problem", "smallest_batch"]

LAUNCH_HINT = ("launch one process per device with `torchrun --nproc-per-node N your_script.py` and call "
               "torch.distributed.init_process_group(backend=\"nccl\") (GPUs) or "
               "torch.distributed.init_process_group(backend=\"gloo\") (CPU) in the script before fit")
SEED_BOUND = 2**62


def training_group() -> "TrainingGroup":
    """The default torch.distributed process group, as fit uses it; RuntimeError when there is none."""
    if not torch.distributed.is_available():
        raise RuntimeError("fit(distributed=True) needs torch.distributed, which this torch build lacks")
    if not torch.distributed.is_initialized():
        raise RuntimeError(f"fit(distributed=True) needs an initialised torch.distributed process group and there "
                           f"is none: {LAUNCH_HINT}")
    backend = str(torch.distributed.get_backend())
    return TrainingGroup(torch.distributed.get_rank(), torch.distributed.get_world_size(), backend)


def _nccl_only(backend: str) -> bool:
    return "nccl" in backend and "gloo" not in backend


def _rank_cuda_index() -> int:
    """The CUDA device of this rank: torchrun's LOCAL_RANK where this process sees that many devices, else (one
    device visible per process, or no torchrun) the current CUDA device."""
    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is not None and int(local_rank) < torch.cuda.device_count():
        return int(local_rank)
    return torch.cuda.current_device()


def device_problem(device: torch.device, backend: str, cuda_index: int | None) -> str | None:
    """What is wrong with training on `device` in a group of `backend` on the rank whose CUDA device is
    cuda:`cuda_index` (None: unknown), or None when nothing is."""
    if device.type == "cuda":
        if cuda_index is not None and device.index != cuda_index:
            return (f"the model is on {device}, expected this rank's device cuda:{cuda_index} (torchrun's "
                    f"LOCAL_RANK, or the current device where a process sees fewer GPUs): call "
                    f"torch.cuda.set_device(local_rank) and move the model there, or pass "
                    f"device=f\"cuda:{{local_rank}}\" to fit")
        return None
    if device.type != "cpu":
        return f"the model is on {device}; distributed fit trains on 'cpu' or this rank's CUDA device"
    if _nccl_only(backend):
        return (f"the model is on cpu, but the process group's backend {backend!r} communicates between GPUs: "
                f"move the model to this rank's GPU (torchrun's LOCAL_RANK), or init_process_group(\"gloo\") "
                f"to train on CPUs")
    return None


def smallest_batch(n_train: int, batch_size: int | None) -> int:
    """The size of the smallest batch fit takes from n_train samples: the full set, or the last minibatch of an
    epoch when it is shorter."""
    if batch_size is None or batch_size >= n_train:
        return n_train
    return n_train % batch_size or batch_size


@dataclass(frozen=True)
class TrainingGroup:
    """This process's place in the default process group: `rank` of `world_size`, with `backend`."""

    rank: int
    world_size: int
    backend: str

    @property
    def device(self) -> torch.device:
        """Where this rank's collective tensors live: its GPU for NCCL, the CPU otherwise."""
        return torch.device("cuda", _rank_cuda_index()) if _nccl_only(self.backend) else torch.device("cpu")

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """Every rank's values [k] (float64) -> [world_size, k], row r from rank r, the same on every rank."""
        rows = torch.zeros(self.world_size, values.numel(), dtype=torch.float64, device=self.device)
        rows[self.rank] = values.detach().reshape(-1).to(rows)
        torch.distributed.all_reduce(rows)  # adding zeros leaves each row exact
        return rows

    def agree(self, problem: str | None, error: type[Exception] = ValueError) -> None:
        """Raise `error` on every rank when any rank has a problem (a message; None: none), naming the ranks, so
        that no rank goes on alone into a collective the others never reach."""
        flags = self.gather(torch.tensor([0.0 if problem is None else 1.0]))[:, 0]
        failing = [rank for rank, flag in enumerate(flags.tolist()) if flag]
        if not failing:
            return
        if problem is not None:
            raise error(f"fit(distributed=True) on rank {self.rank} of {self.world_size}: {problem}")
        raise error(f"fit(distributed=True): rank(s) {failing} of {self.world_size} cannot train (their error "
                    f"says why); this rank {self.rank} stops with them")

    def check_device(self, device: torch.device) -> None:
        """ValueError on every rank unless every rank's model is on its own device (see `device_problem`)."""
        needs_index = device.type == "cuda" or _nccl_only(self.backend)
        self.agree(device_problem(device, self.backend, _rank_cuda_index() if needs_index else None))

    def check_same(self, tensors: Mapping[str, torch.Tensor], what: str, why: str) -> None:
        """ValueError on every rank, naming the ranks whose tensors differ from rank 0's, unless all ranks hold
        the same tensors (compared by shape and two sums: a fingerprint, not every value). `what` names the
        tensors in the message, `why` says why they must agree."""
        names = list(tensors)
        if not names:
            return
        rows = self.gather(torch.cat([_fingerprint(tensors[name]) for name in names]))
        per_tensor = rows.view(self.world_size, len(names), -1)
        same = torch.isclose(per_tensor, per_tensor[:1], rtol=0, atol=0, equal_nan=True).all(dim=-1)
        if bool(same.all()):
            return
        differing = [rank for rank in range(self.world_size) if not bool(same[rank].all())]
        keys = [name for index, name in enumerate(names) if not bool(same[:, index].all())]
        raise ValueError(f"fit(distributed=True) needs the same {what} on every rank ({why}); {keys} on "
                         f"rank(s) {differing} differ from rank 0's (in shape or sums)")

    def share_seed(self, seed: int | None) -> int:
        """Rank 0's seed on every rank; a rank-0 seed of None is drawn from rank 0's torch RNG."""
        if self.rank == 0 and seed is None:
            seed = int(torch.randint(SEED_BOUND, ()))
        value = torch.tensor([seed if self.rank == 0 else 0], dtype=torch.int64, device=self.device)
        torch.distributed.all_reduce(value)
        return int(value.item())

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous rows of batch [b, ...]: shard sizes differ by at most one."""
        return torch.tensor_split(batch, self.world_size)[self.rank]

    def shard_weight(self, batch_size: int) -> float:
        """world_size * n_r / b for this rank's n_r of b rows: a batch-mean loss times it, averaged over the ranks
        (what DistributedDataParallel does to gradients), is the batch's mean loss."""
        rows = batch_size // self.world_size + (self.rank < batch_size % self.world_size)  # tensor_split's sizes
        return self.world_size * rows / batch_size

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean over the ranks of a scalar, summed in rank order: the same on every rank (float64)."""
        return self.gather(value).sum() / self.world_size

    def wrap(self, model: nn.Module, device: torch.device) -> nn.parallel.DistributedDataParallel:
        """`model` in DistributedDataParallel, rank 0's parameters and buffers copied to every rank first;
        each backward then averages the gradients over the ranks. Buffers (grids, masks) are not
        synchronised after that: every rank changes them alike."""
        with torch.no_grad():
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer, src=0)
        # torch 2.13 renamed broadcast_buffers (now deprecated) to forward_sync_buffers.
        ddp = nn.parallel.DistributedDataParallel
        name = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters else \
            "broadcast_buffers"
        return ddp(model, device_ids=[device.index] if device.type == "cuda" else None, **{name: False})

    @staticmethod
    @contextlib.contextmanager
    def gradients_in_parameter_layout(model: nn.Module) -> Iterator[None]:
        """Within: every gradient reaches its Parameter with the Parameter's strides, size-1 axes included.
        Autograd may hand a Parameter with a size-1 axis a gradient whose stride on that axis differs (its layout
        rule ignores such axes); DistributedDataParallel compares the strides literally and warns on every rank."""
        handles = [parameter.register_hook(_in_layout_of(parameter)) for parameter in model.parameters()
                   if parameter.requires_grad and parameter.layout == torch.strided and parameter.is_contiguous()]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def _in_layout_of(parameter: nn.Parameter):
    """A gradient hook: the gradient itself when its strides are the parameter's, else a copy with them."""
    def hook(grad: torch.Tensor) -> torch.Tensor:
        if grad.layout != torch.strided or grad.stride() == parameter.stride():
            return grad
        return torch.empty_strided(parameter.shape, parameter.stride(), dtype=grad.dtype,
                                   device=grad.device).copy_(grad)
    return hook


def _fingerprint(tensor: torch.Tensor) -> torch.Tensor:
    """[5] float64: length, element count, dimensions, the sum, and the sum of row sums weighted by row index."""
    table = tensor.detach().reshape(1, 1) if tensor.dim() == 0 else \
        tensor.detach().unsqueeze(1) if tensor.dim() == 1 else tensor.detach().flatten(1)
    rows = table.sum(dim=1, dtype=torch.float64)
    position = torch.arange(1, len(rows) + 1, dtype=torch.float64, device=rows.device)
    counts = [float(len(table)), float(tensor.numel()), float(tensor.dim())]
    return torch.cat([rows.new_tensor(counts), rows.sum().reshape(1), (rows * position).sum().reshape(1)]).cpu()
