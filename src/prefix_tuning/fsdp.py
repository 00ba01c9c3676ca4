"""Fully sharded fine-tuning (`train.fsdp=true`): each process holds 1/N of the weights, gradients and AdamW
moments, so full fine-tuning fits N devices together when the model (x4 with AdamW's moments) fits none alone.

torch's FSDP2 (`fully_shard`), one shard group per transformer block, then the rest (embeddings, final norm,
LM head) at the root, on the process group Accelerate set up (`dist.start`). Why not Accelerate's
`FullyShardedDataParallelPlugin`: Accelerate 1.16 switches to FSDP only for GPU-like launches; on a CPU launch
(gloo) it keeps MULTI_CPU and `prepare` silently wraps the model in DDP instead, unsharded (checked with
`torchrun --nproc-per-node 2`). Calling `fully_shard` ourselves behaves the same on CPU and GPU.

The recipe does not change (`dist`): each micro-batch's loss is weighted by its share of the GLOBAL batch and
the gradients must be SUMMED over processes, so FSDP's default mean is turned off (divide factor 1). FSDP runs
collectives inside every forward and backward, so every process runs the same number of them: a process whose
share of a short last batch is empty runs a stand-in row with loss weight 0. Checkpoints and the artifact are
gathered into full tensors and written by the main process in exactly the format of an unsharded run (same
keys, optimiser state keyed by parameter index), so a run can be resumed with or without FSDP and `generate`
loads its `model.safetensors` as any other.
"""

from __future__ import annotations

import sys
from pathlib import Path

from safetensors.torch import save_model as save_safetensors
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard

from .adapter import transformer_blocks
from .checkpoint import atomic_path
from .config import RunConfig
from .dist import Processes, Replicated, micro_batches
from .methods import Method
from .run import RunDir, artifact_meta
from .state import save_state

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)  # gathered whole, on the main process's CPU


class _Weights(nn.Module):
    """Gathered weights posing as a module, so that safetensors' `save_model` writes them exactly as it writes
    an unsharded model (tied weights stored once, under the same name)."""

    def __init__(self, state: dict[str, Tensor]) -> None:
        super().__init__()
        self._state = state

    def state_dict(self, *args, **kwargs) -> dict[str, Tensor]:
        return self._state


class FullyShard(Replicated):
    """Training state of a model sharded over the processes (see the module docstring). Every method here is a
    collective: all processes call it, in the same order."""

    def __init__(self, method: Method, procs: Processes) -> None:
        super().__init__(method, procs)
        model = method.model
        # tied weights (GPT-2's wte / lm_head): all names of each shared tensor, to tie them again once gathered
        by_ptr: dict[int, list[str]] = {}
        for name, t in model.state_dict().items():
            if t.numel():  # empty tensors all have data_ptr 0
                by_ptr.setdefault(t.data_ptr(), []).append(name)
        self.tied = {alias: names[0] for names in by_ptr.values() for alias in names[1:]}
        self.trainable_names = {n for n, p in model.named_parameters() if p.requires_grad}
        for block in transformer_blocks(model):
            fully_shard(block)
        fully_shard(model)
        for mod in model.modules():
            if isinstance(mod, FSDPModule):
                mod.set_gradient_divide_factor(1.0)  # sum, not mean: losses are already weighted (`dist`)
                mod.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no PREMUL_SUM op)
        # each parameter's name: plain `opt.state_dict()` keys state by index, torch's gathered one by name
        self.names = {id(p): n for n, p in model.named_parameters()}

    def micro_batches(self, idx: list[int], grad_accum: int) -> list[tuple[list[int], int]]:
        """Always grad_accum micro-batches: an empty share becomes one stand-in row of weight 0."""
        real = micro_batches(idx, self.procs.world, self.procs.rank, grad_accum)
        return [(rows, len(rows)) for rows in real] + [(idx[:1], 0)] * (grad_accum - len(real))

    def sync_grads(self, params: list[nn.Parameter]) -> None:
        """Nothing to do: FSDP's backward already reduce-scattered (summed) each shard's gradient."""

    def _full_state(self) -> dict[str, Tensor]:
        """The whole model's state on the main process (empty elsewhere), tied weights tied again."""
        state = get_model_state_dict(self.method.model, options=FULL)
        for alias, name in self.tied.items():
            if state:  # one tensor under both names, with storage of its own (a gathered one may be a view)
                state[name] = state[alias] = state[name].clone()
        return state

    def trainable_state(self) -> dict[str, Tensor]:
        return {k: v for k, v in self._full_state().items() if k in self.trainable_names}

    def load_trainable_state(self, state: dict[str, Tensor]) -> None:
        opts = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(self.method.model, state, options=opts)

    def optimizer_state(self, opt) -> dict:
        """Gathered AdamW state keyed by parameter index, as `opt.state_dict()` of an unsharded run."""
        full = get_optimizer_state_dict(self.method.model, opt, options=FULL)
        if not self.procs.is_main:
            return {}  # cpu_offload gathers onto the main process only
        index = {name: i for i, name in enumerate(n for g in full["param_groups"] for n in g["params"])}
        return {
            "state": {index[n]: s for n, s in full["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in full["param_groups"]],
        }

    def load_optimizer_state(self, opt, state: dict) -> None:
        names = [self.names[id(p)] for g in opt.param_groups for p in g["params"]]
        full = {
            "state": {names[int(i)]: s for i, s in state["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]],
        }
        set_optimizer_state_dict(self.method.model, opt, full, options=StateDictOptions(full_state_dict=True))
        for group, saved in zip(opt.param_groups, state["param_groups"]):  # as saved: torch's loader makes
            group.update({k: v for k, v in saved.items() if k != "params"})  # tuples (AdamW's betas) lists

    def save_artifact(self, run: RunDir, cfg: RunConfig) -> Path:
        """The method's artifact, from the gathered weights, written by the main process."""
        path, state = run.artifact(cfg), self._full_state()
        if not self.procs.is_main:
            return path
        meta = artifact_meta(cfg)
        if self.method.stored is not None:  # finetune-top: its blocks only
            save_state({k: v for k, v in state.items() if self.method.stored(k)}, path, meta)
        else:
            with atomic_path(path) as tmp:
                save_safetensors(_Weights(state), str(tmp), metadata=meta)
        return path


def layout(method: Method, procs: Processes, fsdp: bool) -> Replicated:
    """How the processes hold the model: `FullyShard` with `train.fsdp` under a launch of several processes,
    else `Replicated`. A lone process has nothing to shard it over: it trains unsharded (same result), saying so."""
    if fsdp and procs.world == 1:
        print("[train] train.fsdp=true in a lone process: nothing to shard over, training unsharded", file=sys.stderr)
    return FullyShard(method, procs) if fsdp and procs.world > 1 else Replicated(method, procs)
