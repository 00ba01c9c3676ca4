"""The `generate` recipe: decode the unique MRs of an E2E split (or of an MR file) with trained run dirs and
write, per run, the outputs, the grouped references and the scores (file names: `run.RunDir.decoded`).

Several prefix runs over the same base model (and decoding settings) decode together in mixed batches, each
row with its own prefix (paper §4); fine-tuning runs decode with their own weights. Decoding settings are
the run's config.yaml `decode:` section with the caller's overrides on top.

Precision: the recipe owns its model and casts it to the decoding dtype (faster on CPU than autocast,
which `decode.decode` uses so as to leave a caller's model untouched).

Under `torchrun` / `accelerate launch` each process decodes a consecutive share of the MRs (`dist.shard`);
the main process gathers them in order and writes the files, so they equal a 1-process run's.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

from accelerate.utils import gather_object
from torch import Tensor, nn

from .config import DecodeConfig, RunConfig, validate
from .corpora import Scorer, decode_set, score_outputs  # noqa: F401  (score_outputs re-exported)
from .data import linearize_mr
from .decode import decode
from .dist import local_processes, shard, start
from .hardware import dtype_of, resolve_precision, set_threads
from .models import KVShape, resolve_device
from .run import DecodeFiles, RunDir, load_run, read_config, read_prefix, write_decoded

SPLITS = ("train", "dev", "test")


@dataclasses.dataclass
class GenerateJob:
    """One run dir to decode: what it decodes, with what, and where the files go."""

    run: RunDir
    cfg: RunConfig
    decode_cfg: DecodeConfig
    tables: list[str]
    refs: list[tuple[str, ...]] | None
    score: Scorer | None  # outputs -> scores JSON (None: no references)
    files: DecodeFiles
    name: str  # the split, or the MR file's stem


def load_tables(
    split: str, cfg: RunConfig, *, limit: int | None = None, mrs: str | Path | None = None
) -> tuple[list[str], list[tuple[str, ...]] | None, Scorer | None]:
    """Tables (one per unique source, order of first appearance), their references and their scorer, from the
    run's dataset (`corpora.decode_set`: e2e, webnlg or custom), or from `mrs`: a file with one source per
    line (E2E: an MR `name[The Eagle], eatType[pub]`, linearised; other datasets: the source as is; blank lines
    skipped), which has no references."""
    if mrs is not None:
        lines = Path(mrs).read_text(encoding="utf-8").splitlines()
        tokenized = cfg.data.ref_style == "tokenized"
        tables = [
            (
                linearize_mr(line.strip(), where=f"{mrs}:{n}", tokenized=tokenized)
                if cfg.data.dataset == "e2e"
                else line.strip()
            )
            for n, line in enumerate(lines, 1)
            if line.strip()
        ]
        return tables[:limit], None, None
    ds = decode_set(cfg, split, limit)
    return ds.tables, ds.refs, ds.score


def _decode_cfg(run_cfg: RunConfig, overrides: dict) -> DecodeConfig:
    """The run's decode section with the overrides on top, validated before any model loads."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    valid = {f.name for f in dataclasses.fields(DecodeConfig)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"unknown decoding option(s) {unknown}; valid: {sorted(valid)}")
    dcfg = dataclasses.replace(run_cfg.decode, **overrides)
    validate(dataclasses.replace(run_cfg, decode=dcfg))
    return dcfg


def _load_group(jobs: list[GenerateJob], device) -> tuple[nn.Module, object, list[Tensor | None]]:
    """The model, tokenizer and per-job prefixes of runs that share one model (prefix runs of one base)."""
    first = load_run(jobs[0].run.path, device=device)
    shape = KVShape.from_config(first.model.config)
    return first.model, first.tokenizer, [first.prefix] + [read_prefix(job.run, shape, device) for job in jobs[1:]]


def generate_runs(
    run_dirs: Sequence[str | Path],
    split: str = "test",
    *,
    out: str | Path | None = None,
    limit: int | None = None,
    mrs: str | Path | None = None,
    device: str = "cpu",
    progress: bool = False,
    scores: bool = True,
    metrics: Sequence[str] | None = None,
    **overrides,
) -> list[DecodeFiles]:
    """Decode several run dirs; prefix runs over the same base model (and decoding settings) share batches.

    overrides: DecodeConfig fields (beam_size=..., precision=..., early_stopping=...), applied over each
    run's config.yaml (None values are ignored). scores: write the scores when the MRs have references
    (metrics: a subset of BLEU, NIST, METEOR, ROUGE_L, CIDEr; default all). Returns the files of each run
    (in the order given)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if out is not None and len(run_dirs) > 1 and "{run}" not in str(out):
        raise ValueError("--out with several run dirs must contain '{run}' (replaced by each run dir's name)")
    dev = resolve_device(device)
    procs = start(dev)
    if procs.world > 1:
        dev = procs.accelerator.device  # this process's GPU (cuda:LOCAL_RANK), or the CPU
    name = Path(mrs).stem if mrs is not None else split
    jobs, groups = [], {}
    for run in map(RunDir, run_dirs):
        cfg = read_config(run)
        dcfg = _decode_cfg(cfg, overrides)
        tables, refs, scorer = load_tables(split, cfg, limit=limit, mrs=mrs)
        job = GenerateJob(run, cfg, dcfg, tables, refs, scorer, run.decoded(name, out), name)
        jobs.append(job)
        shared = run.artifact(cfg) == run.prefix  # prefix runs of one base model share it
        key = ("prefix", cfg.model.name, cfg.model.revision) if shared else ("model", str(run.path.resolve()))
        key += tuple(sorted(dataclasses.asdict(dcfg).items()))
        groups.setdefault(key, []).append(job)
    for group in groups.values():
        model, tokenizer, prefixes = _load_group(group, dev)
        d = group[0].decode_cfg
        # processes of one machine share its cores
        threads = set_threads(d.num_threads, processes=local_processes())
        precision = resolve_precision(d.precision, dev)
        d = dataclasses.replace(d, precision=precision)
        if dtype_of(precision) is not None:
            model = model.to(dtype_of(precision))  # we own this model: native low precision, no autocast
        tables = [t for job in group for t in job.tables]
        index = [k for k, job in enumerate(group) for _ in job.tables]
        with_prefix = prefixes[0] is not None
        mine = shard(range(len(tables)), procs.world, procs.rank)  # this process's rows (all of them alone)
        t0 = time.time()
        texts = (
            decode(
                model,
                tokenizer,
                [tables[i] for i in mine],
                prefixes if with_prefix else None,
                d,
                prefix_index=[index[i] for i in mine] if with_prefix else None,
                progress=progress and procs.is_main,
                position=group[0].cfg.method.position,
            )
            if mine
            else []
        )
        if procs.world > 1:
            texts = gather_object(texts)  # every process's outputs, in rank order: the rows in order
        seconds = time.time() - t0
        if not procs.is_main:  # one writer
            del model
            continue
        at = 0
        for job in group:
            hyps, at = texts[at : at + len(job.tables)], at + len(job.tables)
            res = None
            if job.score is not None and scores:
                res = job.score(hyps, metrics)
                res.update(
                    split=job.name,
                    n_mrs=len(hyps),
                    decode=dataclasses.asdict(d),
                    threads=threads,
                    decode_seconds=round(seconds, 2),
                    decoded_with=[str(j.run.path) for j in group],
                )
            write_decoded(job.files, hyps, job.refs, res)
        del model
    procs.wait()  # the files are written when any process returns
    return [job.files for job in jobs]


def generate_run(
    run_dir: str | Path, split: str = "test", out: str | Path | None = None, *, limit: int | None = None, **kwargs
) -> DecodeFiles:
    """Decode one run dir (see `generate_runs`); returns its files."""
    return generate_runs([run_dir], split, out=out, limit=limit, **kwargs)[0]
