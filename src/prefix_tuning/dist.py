"""Training and decoding in several processes (`torchrun` or `accelerate launch`), through `accelerate`.

`train.batch_size` stays the GLOBAL batch (the paper's 10): each optimiser step's batch is cut into
processes x grad_accum micro-batches (`micro_batches`), each micro-batch's loss is weighted by its share of
the global batch, and the gradients are SUMMED over processes (`sum_grads`). With the `sentence_sum` loss (a
mean over the global batch) that is the gradient of one process on the whole batch, so a recipe optimises
the same whatever the process count (checked to 1e-5 in tests/test_scale.py).

Why an explicit all-reduce rather than wrapping the model in DDP: a prefix is a few hundred thousand numbers,
so overlapping its communication with the backward gains nothing, while DDP needs every process to run a
backward at every step, which the last, short batch of an epoch may not give each process (a process with no
rows contributes zero gradients here). Every process applies the same update to the same starting weights
(same seed), so the weights stay identical without broadcasting them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from accelerate import Accelerator
from torch import Tensor, nn

from .config import RunConfig
from .methods import Method
from .run import RunDir, save_artifact

T = TypeVar("T")


@dataclass
class Processes:
    """This process's place among the processes of a launch (one process when not launched)."""

    accelerator: Accelerator | None  # None: a lone process, not launched

    @property
    def world(self) -> int:
        return self.accelerator.num_processes if self.accelerator else 1

    @property
    def rank(self) -> int:
        return self.accelerator.process_index if self.accelerator else 0

    @property
    def is_main(self) -> bool:
        """Only the main process writes files (logs, checkpoints, results) and shows a progress bar."""
        return self.rank == 0

    def sum(self, *values: float) -> list[float]:
        """The sums over all processes of a few numbers (float64, so a sum of sums stays exact enough)."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        return self.accelerator.reduce(t, reduction="sum").tolist()

    def sum_grads(self, params: Sequence[nn.Parameter]) -> None:
        """Replace each parameter's gradient by its sum over the processes (a missing one counts as zero)."""
        if self.world == 1:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])  # one collective for all of them
        flat = self.accelerator.reduce(flat, reduction="sum")
        at = 0
        for p in params:
            p.grad.copy_(flat[at : at + p.numel()].view_as(p.grad))
            at += p.numel()

    def wait(self) -> None:
        if self.accelerator:
            self.accelerator.wait_for_everyone()


class Replicated:
    """Training state when every process holds the whole model (the default; `fsdp.FullyShard` is the other
    layout): gradients summed by `Processes.sum_grads`, files written from the main process's own copy.
    State getters return the full state on the main process and nothing elsewhere (only it writes)."""

    def __init__(self, method: Method, procs: Processes) -> None:
        self.method, self.procs = method, procs

    def micro_batches(self, idx: list[int], grad_accum: int) -> list[tuple[list[int], int]]:
        """(rows, rows counted in the global batch) of this process's micro-batches of one global batch."""
        return [(rows, len(rows)) for rows in micro_batches(idx, self.procs.world, self.procs.rank, grad_accum)]

    def sync_grads(self, params: list[nn.Parameter]) -> None:
        self.procs.sum_grads(params)

    def trainable_state(self) -> dict[str, Tensor]:
        return self.method.trainable_state() if self.procs.is_main else {}

    def load_trainable_state(self, state: dict[str, Tensor]) -> None:
        self.method.load_trainable_state(state)

    def optimizer_state(self, opt: torch.optim.Optimizer) -> dict:
        return opt.state_dict() if self.procs.is_main else {}

    def load_optimizer_state(self, opt: torch.optim.Optimizer, state: dict) -> None:
        opt.load_state_dict(state)

    def save_artifact(self, run: RunDir, cfg: RunConfig) -> Path:
        return save_artifact(run, self.method, cfg) if self.procs.is_main else run.artifact(cfg)


def launched_rank() -> int:
    """This process's rank in a torchrun / accelerate launch, from the launcher's environment (0: not launched)."""
    return int(os.environ.get("RANK", "0"))


def local_processes() -> int:
    """Processes of the launch on this machine: they share its cores (1: not launched)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


LAUNCHER_PRECISIONS = ("bf16", "fp16")  # `accelerate launch --mixed_precision X`: the same name in train.precision


def launcher_precision(configured: str) -> str:
    """The training precision, honouring `accelerate launch --mixed_precision bf16|fp16` (its environment
    variable ACCELERATE_MIXED_PRECISION): it fills in `auto` and must agree with an explicit train.precision.
    `no` (accelerate's default, set on every launch) leaves the config's choice alone. Autocast and fp16 loss
    scaling are then ours (train.py), the same code with or without a launcher."""
    flag = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if flag == "no":
        return configured
    if flag not in LAUNCHER_PRECISIONS:
        raise ValueError(f"accelerate launch --mixed_precision {flag}: not supported, use bf16, fp16 or no")
    if configured not in ("auto", flag):
        raise ValueError(
            f"accelerate launch --mixed_precision {flag} contradicts train.precision={configured}: "
            f"drop one, or make them agree"
        )
    return flag


def start(device: torch.device) -> Processes:
    """Join the launch this process belongs to (gloo on CPU, NCCL on CUDA). A lone process creates no
    Accelerator: its state is process-wide, and a later call for another device (train on CUDA, then decode on
    the CPU in the same Python process) could not change it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Processes(None)
    return Processes(Accelerator(cpu=device.type == "cpu"))


def check_split(batch_size: int, world: int, grad_accum: int) -> None:
    """A global batch must split evenly into processes x accumulation steps, or the recipe would change."""
    if batch_size % (world * grad_accum):
        raise ValueError(
            f"train.batch_size={batch_size} (the global batch) does not split into {world} "
            f"process(es) x train.grad_accum={grad_accum} micro-batches; choose a batch size that "
            f"is a multiple of {world * grad_accum} or another grad_accum / process count"
        )


def micro_batches(idx: list[T], world: int, rank: int, grad_accum: int) -> list[list[T]]:
    """This process's grad_accum micro-batches of one global batch: the batch cut into world x grad_accum
    near-equal consecutive parts, process r taking parts r*grad_accum .. (r+1)*grad_accum-1. A short last
    batch of an epoch may leave some parts empty (they are skipped)."""
    n, parts = len(idx), world * grad_accum
    cuts = [k * n // parts for k in range(parts + 1)]
    mine = range(rank * grad_accum, (rank + 1) * grad_accum)
    return [idx[cuts[k] : cuts[k + 1]] for k in mine if cuts[k + 1] > cuts[k]]


def shard(items: Sequence[T], world: int, rank: int) -> list[T]:
    """This process's consecutive share of `items` (each item in exactly one process; merged in rank order
    they are `items` again)."""
    n = len(items)
    return list(items[rank * n // world : (rank + 1) * n // world])
