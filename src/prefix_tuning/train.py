"""One training loop for every method, written out as a plain function (torchtune style).

AdamW + linear schedule with warm-up, gradient clipping and accumulation, bf16/fp16 autocast, the
original code's per-sentence summed loss, dev loss after each epoch with the best weights kept as the
run's output, a JSONL log, a progress bar, and exact resume: data order is a pure function of
(seed, epoch) and every checkpoint holds optimiser, schedule and RNG states, so an interrupted run that
resumes ends with the same weights as an uninterrupted one. Checkpoints are written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import Tensor
from tqdm.auto import tqdm

from .checkpoint import RESTART, CorruptFileError, load_checkpoint, remove_stale_temps, save_checkpoint
from .config import ConfigError, RunConfig, weight_changes
from .configfile import save_config
from .corpora import train_dev_examples
from .data import IGNORE_INDEX, E2EDataset, collate
from .dist import Processes, check_split, launcher_precision, local_processes, shard, start
from .fsdp import layout
from .hardware import describe_cpu, dtype_of, resolve_precision, set_threads
from .methods import Method, build_method, stored_numel
from .models import load_model, load_tokenizer, resolve_device
from .recompute import enable_checkpointing
from .run import RunDir


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    best_dev_loss: float | None
    train_seconds: float
    seconds_per_epoch: float
    stored_params: int
    trainable_params: int
    artifact: Path
    precision: str  # the concrete precision trained in (`auto` resolved)
    threads: int


def load_examples(cfg: RunConfig):
    """Train and dev examples of the run's dataset (e2e, webnlg or custom; low-data aware, see
    `corpora.train_dev_examples`). Runs first: bad data fails fast."""
    return train_dev_examples(cfg)


def batch_loss(method: Method, batch: dict[str, Tensor], mode: str, dtype: torch.dtype | None) -> tuple[Tensor, int]:
    """Loss of one batch and its number of target tokens.

    sentence_sum: each sentence's token losses are summed, then averaged over the batch (original code);
    token_mean: mean over all target tokens.
    """
    labels = batch["labels"][:, 1:]  # predict token t+1 from position t: (B, T-1)
    target = (labels != IGNORE_INDEX).any(0).nonzero()
    start = int(target[0]) if len(target) else labels.shape[1] - 1  # first position any row predicts
    labels = labels[:, start:]  # (B, k-1)
    k = labels.shape[1] + 1
    logits = method.forward(batch["input_ids"], batch["attention_mask"], dtype, logits_to_keep=k)  # (B, k, V)
    B, V = logits.shape[0], logits.shape[-1]
    # flat cross-entropy: no transposed copy of the logits, no slow 2-D nll path
    logp = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, V), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    ).view(B, -1)  # (B, k-1)
    n_tokens = int((labels != IGNORE_INDEX).sum())
    if mode == "sentence_sum":
        return logp.sum(1).mean(), n_tokens
    return logp.sum() / max(n_tokens, 1), n_tokens


MEGABATCH = 50  # batches per length-sorted group (HF Trainer's LengthGroupedSampler)


def batches(n: int, batch_size: int, seed: int, epoch: int, lengths: list[int] | None = None) -> list[list[int]]:
    """Shuffled batches of one epoch: a pure function of (seed, epoch), so a resumed run sees the same order.

    lengths: group by length: the shuffled order is cut into megabatches of MEGABATCH batches, each sorted
    longest first, and the batch holding the longest example of the epoch goes first (an out-of-memory error
    shows at step 1, not hours later)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
    if lengths is not None:
        mega = MEGABATCH * batch_size
        order = [i for j in range(0, n, mega) for i in sorted(order[j : j + mega], key=lambda i: -lengths[i])]
    out = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if lengths is not None and out:
        longest = max(range(len(out)), key=lambda b: lengths[out[b][0]])
        out[0], out[longest] = out[longest], out[0]
    return out


@torch.no_grad()
def dev_loss(method: Method, dev, pad_id: int, cfg: RunConfig, device, dtype, procs: Processes | None = None) -> float:
    """Mean per-sentence loss on dev (same reduction as training, summed over batches exactly). With several
    processes each takes a consecutive share of dev, so every example counts exactly once. Every process runs
    as many forwards as the largest share needs (under FSDP each forward gathers weights, all processes
    together), those past the end of its share on a stand-in example that counts 0."""
    method.eval_mode()
    world, rank = (procs.world, procs.rank) if procs else (1, 0)
    mine = shard(range(len(dev)), world, rank)
    bs = cfg.train.batch_size
    rounds = math.ceil(-(-len(dev) // world) / bs)  # the largest share's batches
    total, count = 0.0, 0
    for i in range(0, rounds * bs, bs):
        rows = mine[i : i + bs]
        chunk = [dev[j] for j in rows or [0]]
        batch = {k: v.to(device) for k, v in collate(chunk, pad_id).items()}
        with _autocast(device, dtype):
            loss, _ = batch_loss(method, batch, cfg.train.loss, dtype)
        total += float(loss) * len(rows)
        count += len(rows)
    if procs:
        total, count = procs.sum(total, count)
    return total / max(count, 1)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_same_training(run: RunDir, cfg: RunConfig) -> None:
    """Refuse to resume `run`'s checkpoint under settings that would train other weights (a changed lr, method,
    data...): the result would belong to neither config."""
    changes = weight_changes(yaml.safe_load(run.config.read_text(encoding="utf-8")) or {}, cfg)
    if changes:
        raise ConfigError(
            f"{run.config}: its checkpoint was trained with other settings ({'; '.join(changes)}); resuming would "
            f"mix them. Keep the old settings, or start over: a new out_dir, or delete {run.checkpoint.parent}"
        )


def train(cfg: RunConfig, *, resume: bool = True, max_steps_this_call: int | None = None) -> TrainResult:
    """Train per `cfg`, writing everything into `cfg.out_dir`. Re-running resumes from the last checkpoint.

    max_steps_this_call: stop (after checkpointing) once this many steps ran in this call; for tests of
    resume and for time-boxed jobs.

    Under `torchrun` / `accelerate launch` every process runs this function: each trains on its share of
    every global batch (`dist`), only the main process writes files, all resume from the same checkpoint.
    """
    run = RunDir(cfg.out_dir)
    device = resolve_device(cfg.train.device)
    procs = start(device)
    if procs.world > 1:
        device = procs.accelerator.device  # this process's GPU (cuda:LOCAL_RANK), or the CPU
    check_split(cfg.train.batch_size, procs.world, cfg.train.grad_accum)
    main = procs.is_main
    # processes of one machine share its cores
    threads = set_threads(cfg.train.num_threads, processes=local_processes())
    precision = resolve_precision(launcher_precision(cfg.train.precision), device)
    # config.yaml records what was used: `auto` resolved for this machine
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=precision))
    if resume and run.checkpoint.is_file() and run.config.is_file():
        check_same_training(run, cfg)
    if main:
        run.path.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run.config)
    dtype = dtype_of(precision)
    if main:
        print(
            f"[train] {cfg.method.name}: precision {precision}, {threads} threads, device {device}"
            + (f", {procs.world} processes" if procs.world > 1 else "")
            + (f" ({describe_cpu()})" if device.type == "cpu" else ""),
            file=sys.stderr,
        )

    train_ex, dev_ex = load_examples(cfg)
    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    tokenizer = load_tokenizer(cfg.model.name, cfg.data.dir)
    # (input_ids, labels) pairs: the original's training sequence, loss on the reference only
    train_set = E2EDataset(train_ex, tokenizer, max_length=cfg.data.max_length)
    dev_set = E2EDataset(dev_ex, tokenizer, max_length=cfg.data.max_length)
    model = load_model(cfg.model.name, revision=cfg.model.revision).to(device)
    method = build_method(cfg.method, model, tokenizer, seed=cfg.train.seed)
    if cfg.train.gradient_checkpointing:
        enable_checkpointing(model)
    # replicated in every process, or sharded over them (train.fsdp): gradients, checkpoints, artifact
    held = layout(method, procs, cfg.train.fsdp)
    if not train_set:
        raise ValueError("no training examples")

    lengths = [len(train_set[i][0]) for i in range(len(train_set))] if cfg.data.group_by_length else None
    steps_per_epoch = math.ceil(len(train_set) / cfg.train.batch_size)
    total_steps = cfg.train.max_steps or steps_per_epoch * cfg.train.epochs
    params = method.trainable()
    opt = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    warm = cfg.train.warmup_steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total_steps - s) / max(1, total_steps - warm))
    )
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16 and device.type == "cuda")

    step, best, train_seconds = 0, None, 0.0
    stale = 0  # dev evaluations since the last new best (train.patience)
    ckpt_path = run.checkpoint
    if main:
        remove_stale_temps(run.path, ckpt_path.parent)  # left by writes that a kill cut short
    procs.wait()  # every process sees the same files from here on
    if resume and ckpt_path.is_file():
        saved = load_checkpoint(ckpt_path)
        held.load_trainable_state(saved["trainable"])
        held.load_optimizer_state(opt, saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        step, best, train_seconds = saved["step"], saved["best_dev_loss"], saved["train_seconds"]
        stale = saved.get("evals_since_best", 0)  # absent in checkpoints written before train.patience
        _set_rng_state(saved["rng"])
        if main and run.log.is_file() and run.log.stat().st_size > saved["log_bytes"]:
            os.truncate(run.log, saved["log_bytes"])  # lines after the checkpoint: the resumed run writes them again
    elif resume and (old := run.pickle_checkpoint).is_file():
        raise CorruptFileError(
            f"{old} is an older prefix-tuning's pickle checkpoint, not loaded (unpickling can run "
            f"arbitrary code); {RESTART}"
        )
    elif main and run.log.exists():
        run.log.unlink()  # a fresh run: the old log would mix two runs

    def checkpoint() -> None:
        trainable, optimizer = held.trainable_state(), held.optimizer_state(opt)  # gathered (FSDP: by all)
        if not main:
            return
        log.flush()  # the log up to this step is on disk, and its length is in the checkpoint
        os.fsync(log.fileno())
        save_checkpoint(
            ckpt_path,
            {
                "trainable": trainable,
                "optimizer": optimizer,
                "scheduler": sched.state_dict(),
                "step": step,
                "best_dev_loss": best,
                "evals_since_best": stale,
                "train_seconds": train_seconds,
                "rng": _rng_state(),
                "log_bytes": os.fstat(log.fileno()).st_size,
            },
        )

    def evaluate(tag: dict) -> None:
        nonlocal best, stale
        if not dev_set:
            return
        loss = dev_loss(method, dev_set, tokenizer.pad_token_id, cfg, device, dtype, procs)
        log.write(json.dumps({**tag, "step": step, "dev_loss": loss}) + "\n")
        log.flush()
        if best is None or loss < best:
            best, stale = loss, 0
            held.save_artifact(run, cfg)  # the best weights are the run's output
        else:
            stale += 1
        method.train_mode(cfg.method.backbone_dropout)

    def stopped_early() -> bool:
        return cfg.train.patience is not None and stale >= cfg.train.patience

    log = open(run.log if main else os.devnull, "a", encoding="utf-8")  # one writer: the main process
    log.write(
        json.dumps(
            {
                "event": "start",
                "step": step,
                "precision": precision,
                "threads": threads,
                "device": str(device),
                "cpu": describe_cpu() if device.type == "cpu" else None,
            }
        )
        + "\n"
    )
    bar = tqdm(
        total=total_steps,
        initial=step,
        desc=f"train {cfg.method.name}",
        unit="step",
        dynamic_ncols=True,
        disable=not main,
    )
    steps_this_call = 0
    method.train_mode(cfg.method.backbone_dropout)
    try:
        while step < total_steps and not stopped_early():
            epoch, in_epoch = divmod(step, steps_per_epoch)
            idx = batches(len(train_set), cfg.train.batch_size, cfg.train.seed, epoch, lengths)[in_epoch]
            t0 = time.perf_counter()
            n_tok, loss_sum = 0, 0.0
            opt.zero_grad(set_to_none=True)
            # this process's share of the global batch, in grad_accum micro-batches
            for rows, counted in held.micro_batches(idx, cfg.train.grad_accum):
                part = [train_set[i] for i in rows]
                batch = {k: v.to(device) for k, v in collate(part, tokenizer.pad_token_id).items()}
                with _autocast(device, dtype):
                    loss, n = batch_loss(method, batch, cfg.train.loss, dtype)
                # weighted by its share of the global batch: summed over micro-batches and processes, the
                # gradient is that of one big batch
                # (counted = 0: a stand-in row that FSDP's collectives need, contributing nothing)
                loss = loss * counted / len(idx)
                scaler.scale(loss).backward()
                loss_sum += float(loss.detach())
                n_tok += int(batch["attention_mask"].sum()) if counted else 0
            held.sync_grads(params)  # the global batch's gradient in every process (FSDP: its shard of it)
            loss_sum, n_tok = procs.sum(loss_sum, n_tok)
            if cfg.train.max_grad_norm is not None:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)
            lr = sched.get_last_lr()[0]
            scaler.step(opt)
            scaler.update()
            sched.step()
            step += 1
            steps_this_call += 1
            dt = time.perf_counter() - t0
            train_seconds += dt
            log.write(
                json.dumps(
                    {
                        "step": step,
                        "epoch": epoch,
                        "loss": loss_sum,
                        "lr": lr,
                        "tokens_per_s": n_tok / dt,
                        "seconds": dt,
                    }
                )
                + "\n"
            )
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum:.3f}", lr=f"{lr:.2e}")
            end_of_epoch = step % steps_per_epoch == 0
            if cfg.train.eval_every_epoch and (end_of_epoch or step == total_steps):
                evaluate({"epoch": epoch})
            elif cfg.train.eval_steps and step % cfg.train.eval_steps == 0:
                evaluate({"epoch": epoch})
            if stopped_early():
                log.write(json.dumps({"event": "early_stop", "step": step, "patience": cfg.train.patience}) + "\n")
            done = step == total_steps or stopped_early()  # an early stop is final: a re-run resumes into it
            if step % cfg.train.save_every == 0 or done:
                checkpoint()
            if max_steps_this_call is not None and steps_this_call >= max_steps_this_call and not done:
                checkpoint()
                break
    finally:
        bar.close()
        log.close()

    artifact = run.artifact(cfg)
    procs.wait()  # every process sees whether the main process wrote the artifact
    if (step >= total_steps or stopped_early()) and (best is None or not artifact.exists()):
        held.save_artifact(run, cfg)  # no dev set: the last weights are the output
    procs.wait()  # the run's files are written when any process returns
    epochs_done = step / steps_per_epoch
    return TrainResult(
        run.path,
        step,
        best,
        train_seconds,
        train_seconds / max(epochs_done, 1e-9),
        stored_numel(cfg, model, method.encoder.length if method.encoder else None),
        sum(p.numel() for p in params),
        artifact,
        precision,
        threads,
    )
