"""FSDP (train.fsdp=true): 2 CPU processes (torchrun, gloo) fine-tune like 1 process and save the same files.

tiny-llama, because it has no dropout: with dropout, 2 processes draw other masks than 1 (each process has its
own RNG stream), sharded or not. fp32 throughout: the only differences are summation orders (a gradient summed
over 2 processes instead of over one batch), ~1e-7 relative per step, so 1e-5 leaves two orders of margin.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from test_scale import LAUNCH, _env, _finish, _port, _same_losses

from prefix_tuning.checkpoint import load_checkpoint
from prefix_tuning.config import ConfigError
from prefix_tuning.configfile import load_config
from prefix_tuning.generate import generate_run
from prefix_tuning.train import train

# 17 examples in batches of 4: the last batch of the epoch (step 5) has 1 row, so one process runs a stand-in
# row; eval every 2 steps keeps the best weights; a small clipping norm makes clipping act at every step
FSDP = [
    *LAUNCH,
    "model.name=tiny-llama",
    "method.name=finetune",
    "data.train_size=17",
    "train.lr=1e-3",
    "train.max_steps=6",
    "train.max_grad_norm=0.5",
    "train.fsdp=true",
]
# runs train(cfg, max_steps_this_call=N) in every process of a launch; PATCH is run first
SCRIPT = """import sys
{patch}
from prefix_tuning.configfile import load_config
from prefix_tuning.train import train
n = int(sys.argv[1])
train(load_config(None, sys.argv[2:]), max_steps_this_call=n or None)
"""


def _launch(tmp_path: Path, n: int, *args: str, stop_after: int = 0, patch: str = "") -> str:
    script = tmp_path / "launch.py"
    script.write_text(SCRIPT.format(patch=patch))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--master-port", str(_port())]
    p = subprocess.Popen(
        [*cmd, str(script), str(stop_after), *args],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return _finish(p)


def _tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def _same_model(a: Path, b: Path, file: str = "model.safetensors") -> None:
    (ta, ma), (tb, mb) = _tensors(a / file), _tensors(b / file)
    assert ma == mb  # incl. the tied lm_head.weight -> embed_tokens.weight alias that save_model records
    assert {k: v.shape for k, v in ta.items()} == {k: v.shape for k, v in tb.items()}
    for k in ta:
        assert torch.allclose(ta[k], tb[k], atol=1e-5, rtol=1e-5), (k, (ta[k] - tb[k]).abs().max())


def _same_checkpoint(a: Path, b: Path) -> None:
    """Same format (an FSDP run's checkpoint resumes unsharded and back) and the same numbers."""
    ca, cb = (load_checkpoint(p / "checkpoints" / "last.safetensors") for p in (a, b))
    assert ca["step"] == cb["step"] and ca["optimizer"]["param_groups"] == cb["optimizer"]["param_groups"]
    assert ca["trainable"].keys() == cb["trainable"].keys()
    for k in ca["trainable"]:
        assert torch.allclose(ca["trainable"][k], cb["trainable"][k], atol=1e-5), k
    sa, sb = ca["optimizer"]["state"], cb["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for m in ("exp_avg", "exp_avg_sq"):  # the moments see the gradient's scale (the weights barely do)
            assert torch.allclose(sa[i][m], sb[i][m], atol=1e-7, rtol=1e-4), (i, m)


@pytest.mark.parametrize(
    "method, file",
    [("finetune", "model.safetensors"), pytest.param("finetune-top", "top.safetensors", marks=pytest.mark.slow)],
)
def test_fsdp_two_processes_fine_tune_like_one(tmp_path, data_dir, capfd, method, file):
    one, two = tmp_path / "one", tmp_path / "two"
    opts = [*FSDP, f"method.name={method}", "method.top_k_layers=1"]
    train(load_config(None, [*opts, f"out_dir={one}"]))  # a lone process: the same config, unsharded
    assert "train.fsdp=true in a lone process" in capfd.readouterr().err
    _launch(tmp_path, 2, *opts, f"out_dir={two}")
    _same_losses(one, two)
    _same_model(one, two, file)
    _same_checkpoint(one, two)
    # `generate` loads the FSDP run's model.safetensors like any other and decodes the same text
    opts = dict(limit=4, scores=False, beam_size=2, max_new_tokens=12)
    texts = [generate_run(r, "dev", tmp_path / f"{r.name}.txt", **opts).outputs.read_text() for r in (one, two)]
    assert texts[0] == texts[1] and len(texts[0].splitlines()) == 4


@pytest.mark.parametrize("method", ["prefix", "adapter", "lora"])
def test_fsdp_refused_for_small_methods(method):
    with pytest.raises(ConfigError, match="train.fsdp=true .* finetune / finetune-top"):
        load_config(None, ["method.name=" + method, "method.adapter_fraction=0.1", "train.fsdp=true"])
    load_config(None, ["method.name=finetune-top", "train.fsdp=true"])


@pytest.mark.slow
def test_fsdp_stopped_and_resumed_ends_equal(tmp_path, data_dir):
    full, part = tmp_path / "full", tmp_path / "part"
    _launch(tmp_path, 2, *FSDP, f"out_dir={full}")
    _launch(tmp_path, 2, *FSDP, f"out_dir={part}", stop_after=3)  # stops after checkpointing step 3
    assert load_checkpoint(part / "checkpoints" / "last.safetensors")["step"] == 3
    shutil.copytree(part, alone := tmp_path / "alone")
    _launch(tmp_path, 2, *FSDP, f"out_dir={part}")  # every process resumes from that checkpoint
    _same_losses(full, part)
    _same_model(full, part)
    _same_checkpoint(full, part)
    # the checkpoint has an unsharded run's format: one process resumes it unsharded and ends equal too
    train(load_config(None, [*FSDP, f"out_dir={alone}"]))
    _same_losses(full, alone)
    _same_model(full, alone)


@pytest.mark.slow
def test_negative_control_fsdp_mean_gradients_are_caught(tmp_path, data_dir):
    """FSDP's default (gradients averaged over the 2 processes) halves every gradient. AdamW barely notices
    (its update is scale-free but for eps) and clipping would hide it entirely, so clipping is off here and
    the checkpoint's moments are what must show it, as `_same_checkpoint` checks."""
    opts = [*FSDP, "train.max_grad_norm=null"]
    patch = "from torch.distributed.fsdp import FSDPModule; FSDPModule.set_gradient_divide_factor = lambda m, f: None"
    train(load_config(None, [*opts, f"out_dir={tmp_path / 'one'}"]))
    _launch(tmp_path, 2, *opts, f"out_dir={tmp_path / 'mean'}", patch=patch)
    with pytest.raises(AssertionError):
        _same_checkpoint(tmp_path / "one", tmp_path / "mean")
    ca, cb = (load_checkpoint(tmp_path / r / "checkpoints" / "last.safetensors") for r in ("one", "mean"))
    ratio = cb["optimizer"]["state"][0]["exp_avg"].norm() / ca["optimizer"]["state"][0]["exp_avg"].norm()
    assert abs(ratio - 0.5) < 1e-3, ratio
