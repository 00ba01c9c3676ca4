"""Scale-out: gradient checkpointing with the prefix, length-grouped batches, multi-process training and decoding."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import DynamicCache

from prefix_tuning.checkpoint import load_checkpoint
from prefix_tuning.config import MethodConfig
from prefix_tuning.dist import check_split, micro_batches, shard
from prefix_tuning.methods import build_method
from prefix_tuning.models import build_tiny
from prefix_tuning.prefix import prefix_inputs
from prefix_tuning.recompute import enable_checkpointing
from prefix_tuning.train import batch_loss


def _batch(vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (3, 12), generator=g)  # (B, T)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # right padding
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :4] = -100  # the table part
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _grads(model_name: str, method: str, checkpointing: bool) -> dict[str, torch.Tensor]:
    model = build_tiny(model_name)
    m = build_method(MethodConfig(name=method, mlp_hidden=16), model, None, seed=0)
    m.train_mode(backbone_dropout=False)
    if checkpointing:
        assert enable_checkpointing(model) == model.config.num_hidden_layers
    torch.manual_seed(0)  # fine-tuning trains with dropout: the recompute must replay the same masks
    loss, _ = batch_loss(m, _batch(model.config.vocab_size), "sentence_sum", None)
    loss.backward()
    mod = m.encoder if m.encoder is not None else m.model
    return {n: p.grad.clone() for n, p in mod.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("model_name", ["tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("method", ["prefix", "finetune"])
def test_gradient_checkpointing_gives_the_same_gradients(model_name, method):
    plain, ckpt = _grads(model_name, method, False), _grads(model_name, method, True)
    assert plain.keys() == ckpt.keys() and plain
    for name in plain:
        assert torch.allclose(plain[name], ckpt[name], atol=1e-5, rtol=1e-5), name
        assert plain[name].abs().sum() > 0, name


@pytest.mark.parametrize("model_name", ["tiny-gpt2", "tiny-llama"])
def test_negative_control_in_place_cache_breaks_under_recompute(model_name):
    """A normal DynamicCache is extended by each forward: a recomputed block appends its keys/values again,
    so the backward sees other shapes (an error) or other values. This is what `training_cache` prevents."""
    model = build_tiny(model_name)
    model.requires_grad_(False)
    enable_checkpointing(model)
    s = model.config.num_hidden_layers
    kv = model.config.num_key_value_heads if hasattr(model.config, "num_key_value_heads") else model.config.n_head
    d = model.config.hidden_size // model.config.num_attention_heads
    prefix = torch.randn(s, 2, kv, 2, d, requires_grad=True)  # (L, 2, KV, P, D)
    b = _batch(model.config.vocab_size)
    kw = prefix_inputs(prefix, b["input_ids"], b["attention_mask"], cache=DynamicCache())
    with pytest.raises(RuntimeError):  # CheckpointError: the recompute saw other shapes
        model(**kw).logits.sum().backward()


def test_train_with_gradient_checkpointing_ends_equal(tmp_path, data_dir):
    from test_train import _cfg, _prefix  # the tiny E2E recipe of the training tests

    from prefix_tuning.train import train

    a = train(_cfg(tmp_path, "train.max_steps=2", "train.eval_every_epoch=false", name="a"))
    b = train(
        _cfg(
            tmp_path, "train.max_steps=2", "train.eval_every_epoch=false", "train.gradient_checkpointing=true", name="b"
        )
    )
    assert torch.allclose(_prefix(a.run_dir), _prefix(b.run_dir), atol=1e-5)


# ------------------------------------------------------------------------------------------ group_by_length


def _padding(groups: list[list[int]], lengths: list[int]) -> float:
    """Fraction of padded positions when each batch is padded to its longest example."""
    real = sum(lengths[i] for b in groups for i in b)
    return 1 - real / sum(max(lengths[i] for i in b) * len(b) for b in groups)


def test_group_by_length_pure_covers_all_and_pads_less(data_dir):
    from prefix_tuning.data import E2EDataset, load_e2e
    from prefix_tuning.models import load_tokenizer
    from prefix_tuning.train import batches

    examples = load_e2e("train", data_dir=str(data_dir))[:3000]
    ds = E2EDataset(examples, load_tokenizer("tiny-gpt2", str(data_dir)))
    lengths = [len(ds[i][0]) for i in range(len(ds))]
    n = len(lengths)
    for epoch in (0, 1):
        grouped = batches(n, 10, 101, epoch, lengths)
        assert grouped == batches(n, 10, 101, epoch, list(lengths))  # a pure function of (seed, epoch)
        assert sorted(i for b in grouped for i in b) == list(range(n))  # every example once
        assert max(lengths[i] for i in grouped[0]) == max(lengths)  # the longest batch first
        plain = batches(n, 10, 101, epoch)
        assert _padding(grouped, lengths) < 0.5 * _padding(plain, lengths)
    assert batches(n, 10, 101, 0, lengths) != batches(n, 10, 101, 1, lengths)  # still shuffled per epoch


# ------------------------------------------------------------------------------------------ several processes

REPO = Path(__file__).resolve().parents[1]
LAUNCH = [
    "model.name=tiny-gpt2",
    "data.train_size=16",
    "data.dev_size=5",
    "data.max_length=64",
    "method.mlp_hidden=16",
    "train.batch_size=4",
    "train.lr=1e-2",
    "train.save_every=2",
    "train.precision=fp32",
    "train.device=cpu",
    "train.eval_steps=2",
    "train.num_threads=1",
    "decode.precision=fp32",
]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
    }


def _torchrun(n: int, *args: str, **kw) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(n),
        "--master-port",
        str(_port()),
        "-m",
        "prefix_tuning.cli",
        *args,
    ]
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _finish(p: subprocess.Popen) -> str:
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out[-3000:]
    return out


def _losses(run_dir: Path) -> list[tuple[str, float]]:
    rows = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    return [(k, r[k]) for r in rows for k in ("loss", "dev_loss") if k in r]


def _same_losses(a: Path, b: Path) -> None:
    """The same logged train and dev losses, step by step, within 1e-5 relative."""
    la, lb = _losses(a), _losses(b)
    assert [k for k, _ in la] == [k for k, _ in lb] and la
    assert all(abs(x - y) <= 1e-5 * max(1.0, abs(x)) for (_, x), (_, y) in zip(la, lb)), (la, lb)


def _same_run(a: Path, b: Path) -> None:
    _same_losses(a, b)
    pa, pb = load_file(str(a / "prefix.safetensors"))["prefix"], load_file(str(b / "prefix.safetensors"))["prefix"]
    assert torch.allclose(pa, pb, atol=1e-5), (pa - pb).abs().max()


@pytest.mark.parametrize("model_name", ["tiny-gpt2", pytest.param("tiny-llama", marks=pytest.mark.slow)])
def test_two_processes_train_like_one(tmp_path, data_dir, model_name):
    """torchrun --nproc-per-node 2 on CPU (gloo): the same logged losses, dev losses and prefix as 1 process."""
    args = [*LAUNCH, f"model.name={model_name}", "train.max_steps=4"]
    one = _torchrun(1, "train", "defaults", *args, f"out_dir={tmp_path / 'one'}")
    _finish(one)
    out = _finish(_torchrun(2, "train", "defaults", *args, f"out_dir={tmp_path / 'two'}"))
    assert out.count("run dir:") == 1  # only the main process reports
    _same_run(tmp_path / "one", tmp_path / "two")


def test_batch_split_and_shards():
    with pytest.raises(ValueError, match="does not split"):
        check_split(10, 4, 1)
    check_split(10, 2, 1)
    check_split(12, 2, 3)
    idx = list(range(10))
    parts = [micro_batches(idx, 2, r, 1) for r in range(2)]
    assert parts == [[[0, 1, 2, 3, 4]], [[5, 6, 7, 8, 9]]]
    assert micro_batches([7], 2, 0, 1) == [] and micro_batches([7], 2, 1, 1) == [[7]]  # a short last batch
    assert [x for r in range(3) for x in shard(list(range(7)), 3, r)] == list(range(7))


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants, deepest first (Linux /proc)."""
    parent = {}
    for d in Path("/proc").iterdir():
        try:
            parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError):
            continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += [c for c, pp in parent.items() if pp == p]
    return out[::-1]


@pytest.mark.slow
def test_two_processes_killed_and_resumed_end_equal(tmp_path, data_dir):
    args = [*LAUNCH, "train.max_steps=60", "train.eval_steps=null"]
    _finish(_torchrun(2, "train", "defaults", *args, f"out_dir={tmp_path / 'full'}"))
    run = tmp_path / "killed"
    p = _torchrun(2, "train", "defaults", *args, f"out_dir={run}")
    deadline = time.time() + 120
    while not (run / "checkpoints" / "last.safetensors").exists() and time.time() < deadline:
        time.sleep(0.05)
    for pid in _tree(p.pid):  # both workers and torchrun (which starts its workers in sessions of their own)
        os.kill(pid, signal.SIGKILL)
    p.communicate()
    assert load_checkpoint(run / "checkpoints" / "last.safetensors")["step"] < 60, "finished before the kill"
    _finish(_torchrun(2, "train", "defaults", *args, f"out_dir={run}"))
    _same_run(tmp_path / "full", run)


def test_two_processes_decode_like_one(tmp_path, data_dir):
    """`generate` under torchrun: each process decodes a share of the MRs; the merged file equals 1 process's."""
    from test_train import _cfg

    from prefix_tuning.generate import generate_run
    from prefix_tuning.train import train

    run = train(_cfg(tmp_path, "train.max_steps=1", "train.eval_every_epoch=false")).run_dir
    opts = [
        "--split",
        "dev",
        "--limit",
        "7",
        "--no-scores",
        "--quiet",
        "--beam-size",
        "2",
        "--max-new-tokens",
        "12",
        "--device",
        "cpu",
    ]
    generate_run(run, "dev", tmp_path / "one.txt", limit=7, scores=False, beam_size=2, max_new_tokens=12)
    out = _finish(_torchrun(2, "generate", str(run), *opts, "--out", str(tmp_path / "two.txt")))
    assert out.count("two.txt") == 1  # only the main process reports
    one, two = (tmp_path / "one.txt").read_text().splitlines(), (tmp_path / "two.txt").read_text().splitlines()
    assert len(one) == 7 and one == two


def test_group_by_length_resumes_exactly(tmp_path, data_dir):
    from test_train import _cfg, _prefix

    from prefix_tuning.train import train

    opts = ["train.max_steps=6", "train.eval_every_epoch=false", "data.group_by_length=true"]
    full = train(_cfg(tmp_path, *opts, name="full"))
    part = _cfg(tmp_path, *opts, name="part")
    assert train(part, max_steps_this_call=3).steps == 3  # "killed" after 3 steps
    assert torch.equal(_prefix(full.run_dir), _prefix(train(part).run_dir))
    plain = train(_cfg(tmp_path, "train.max_steps=6", "train.eval_every_epoch=false", name="plain"))
    assert not torch.equal(_prefix(full.run_dir), _prefix(plain.run_dir))  # the grouping changed the batches
