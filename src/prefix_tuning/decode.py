"""Decoding: tables -> texts with a frozen model and one prefix, several prefixes, or none; run-level output
files (outputs, grouped references, scores) and the `generate` command.

API:
- `decode(model, tokenizer, tables, prefix, cfg, *, prefix_index=None)` -> one text per table.
  `prefix` is None (fine-tuned or plain model), one (L, 2, KV, P, D) prefix shared by every table, a stack
  (N, L, 2, KV, P, D) or a list of N prefixes with `prefix_index[i]` naming the prefix of table i. Rows with
  different prefixes share batches over the same frozen model (paper §4); prefixes of different lengths P
  are mixed too (left-padded with masked positions; real tokens keep positions P_i..). A mixed batch gives
  the same texts as decoding each prefix alone, and results depend neither on batch size nor on padding.
- `generate_run(run_dir, split)` / `generate_runs([...])` write `outputs-<split>.txt` (one line per unique
  MR, in order of first appearance), `refs-<split>.txt` (the official grouped format: the references of one
  MR on consecutive lines, a blank line between MRs) and `scores-<split>.json` in each run dir.

Search (see `prefix_tuning.beam`): our own batched beam search with Hugging Face's beam semantics (a test
compares it with `generate(num_beams=K)`), prompts run once per row, the cache expanded to beams after.

Defaults (DecodeConfig; the run's config.yaml `decode:` section, then command-line options) follow Li &
Liang's E2E decoding (their gpt2/run_generation.py): beam 5, at most 100 new tokens, EOS banned before 5
new tokens, length penalty 1.0, no n-gram ban, newline tokens banned (the original bans GPT-2 ids 198
'\\n' and 628 '\\n\\n'; here every token whose text holds a line break for Python's str.splitlines: for
GPT-2 198, 628, 201 '\\r', 44320 '\\n\\xa0' and the control characters 199, 200, 216-218 '\\v \\f \\x1c-\\x1e'),
early_stopping False (HF's default, used by the original through HF generate).

Text: the generated tokens before EOS, decoded with special tokens skipped, stripped, any remaining line
break replaced by a space (a guard: banned tokens already keep them out), so one output is one line.

Precision: `bf16`/`fp16` run the model under torch.autocast when it is fp32 (the caller's model is left
untouched); a model already in that dtype runs natively. `generate_run*` own their model and cast it to
the dtype instead, which is faster on CPU (no per-step weight casts).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor, nn

from .beam import SearchSettings, check_prefixes, decode_ids, row_prefixes
from .config import DecodeConfig
from .hardware import PRECISIONS, dtype_of, resolve_precision, set_threads

_newline_cache: dict = {}


def newline_token_ids(tokenizer) -> tuple[int, ...]:
    """Ids of tokens whose text holds a line break (found by decoding every token; special tokens excluded).

    A line break is what Python's str.splitlines splits on. GPT-2: 198 '\\n', 628 '\\n\\n' (the two the
    original bans), 201 '\\r', 44320 '\\n\\xa0', 199 '\\v', 200 '\\f', 216-218 '\\x1c'-'\\x1e'."""
    key = (type(tokenizer).__name__, getattr(tokenizer, "name_or_path", ""), len(tokenizer))
    if key not in _newline_cache:
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], clean_up_tokenization_spaces=False)
        special = set(tokenizer.all_special_ids)
        _newline_cache[key] = tuple(i for i, t in enumerate(texts)
                                    if i not in special and len(f"x{t}x".splitlines()) > 1)
    return _newline_cache[key]


def eos_id_of(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{type(tokenizer).__name__} has no eos_token: cannot end a generated text")
    return int(tokenizer.eos_token_id)


def search_settings(cfg: DecodeConfig, tokenizer, *, banned_ids: Sequence[int] = ()) -> SearchSettings:
    """SearchSettings for a DecodeConfig (and extra banned ids) with this tokenizer's EOS and newlines."""
    newlines = newline_token_ids(tokenizer) if cfg.ban_newlines else ()
    return SearchSettings.from_config(cfg, eos_id=eos_id_of(tokenizer), banned_ids=(*banned_ids, *newlines))


def ids_to_text(tokenizer, ids: Sequence[int]) -> str:
    """Generated ids -> one line of text (special tokens skipped, stripped, line breaks -> spaces)."""
    text = tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return " ".join(text.splitlines()).strip()


def decode(model: nn.Module, tokenizer, tables: Sequence[str], prefix: Tensor | Sequence[Tensor] | None = None,
           cfg: DecodeConfig | None = None, *, prefix_index: Sequence[int] | None = None, progress: bool = False,
           banned_ids: Sequence[int] = ()) -> list[str]:
    """One generated text per linearised table (see the module docstring for prefix forms and defaults).

    The prompt of a table is `prefix_tuning.data.encode_prompt` (the training sequence up to and including
    the separator EOS), so generation continues exactly where training put the reference.
    """
    from .data import encode_prompt

    cfg = cfg or DecodeConfig()
    prefixes = row_prefixes(prefix, prefix_index, len(tables))
    check_prefixes(model, prefixes)
    settings = search_settings(cfg, tokenizer, banned_ids=banned_ids)
    prompts = [encode_prompt(tokenizer, t) for t in tables]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else settings.eos_id
    precision = resolve_precision(cfg.precision, next(model.parameters()).device)
    ids = decode_ids(model, prompts, prefixes, settings, pad_id=pad, batch_size=cfg.batch_size,
                     precision=precision, progress=progress)
    return [ids_to_text(tokenizer, g) for g in ids]


# ----------------------------------------------------------------------------------------- run level

@dataclasses.dataclass
class GenerateJob:
    """One run dir to decode: what it decodes, with what, and where the files go."""

    run_dir: Path
    cfg: object  # RunConfig
    decode_cfg: DecodeConfig
    tables: list[str]
    refs: list[tuple[str, ...]] | None
    outputs: Path
    refs_path: Path
    scores_path: Path
    split: str


def load_tables(split: str, cfg, *, limit: int | None = None, mrs: str | Path | None = None
                ) -> tuple[list[str], list[tuple[str, ...]] | None]:
    """Linearised tables (one per unique MR, order of first appearance) and their references.

    From the run's E2E data (`cfg.data.variant`, `cfg.data.dir`), or from `mrs`: a file with one MR per line
    (`name[The Eagle], eatType[pub]`; blank lines skipped), which has no references."""
    from .data import group_by_mr, linearize_mr, load_e2e

    # tables in the form the run trained on; references always raw (the official scorer's)
    tok = getattr(cfg.data, "ref_style", "raw") == "tokenized"
    if mrs is not None:
        lines = Path(mrs).read_text(encoding="utf-8").splitlines()
        tables = [linearize_mr(line.strip(), where=f"{mrs}:{n}", tokenized=tok)
                  for n, line in enumerate(lines, 1) if line.strip()]
        return tables[:limit], None
    groups = group_by_mr(load_e2e(split, variant=cfg.data.variant, data_dir=cfg.data.dir,
                                  on_error=cfg.data.on_error))[:limit]
    tables = [linearize_mr(g.mr, tokenized=True) for g in groups] if tok else [g.table for g in groups]
    return tables, [tuple(g.refs) for g in groups]


def output_paths(run_dir: Path, name: str, out: str | Path | None = None) -> tuple[Path, Path, Path]:
    """(outputs, refs, scores): `RUN_DIR/{outputs,refs}-NAME.txt`, `RUN_DIR/scores-NAME.json` by default;
    with `out` (`{run}` is replaced by the run dir's name) the refs and scores go beside it."""
    if out is None:
        return run_dir / f"outputs-{name}.txt", run_dir / f"refs-{name}.txt", run_dir / f"scores-{name}.json"
    out = Path(str(out).replace("{run}", run_dir.name))
    if "outputs" in out.stem:
        return (out, out.with_name(out.name.replace("outputs", "refs", 1)),
                out.with_name(out.stem.replace("outputs", "scores", 1) + ".json"))
    return out, out.with_name(out.stem + ".refs.txt"), out.with_name(out.stem + ".scores.json")


def _write_text(path: Path, text: str) -> None:
    from .checkpoint import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def refs_text(refs: Sequence[Sequence[str]]) -> str:
    """The official grouped reference format: refs of one MR on consecutive lines, a blank line between MRs."""
    return "\n\n".join("\n".join(r.replace("\n", " ") for r in group) for group in refs) + "\n"


def _score(refs: list[tuple[str, ...]], hyps: list[str], metrics: Sequence[str] | None = None) -> dict | None:
    """`prefix_tuning.metrics.score` (+ its `signature`); without Java, BLEU and NIST only (with a warning)."""
    try:
        from . import metrics as m

        score = m.score
    except (ImportError, AttributeError) as e:
        print(f"warning: no scores ({e}); outputs and refs are written", file=sys.stderr)
        return None
    try:
        res = dict(score([list(r) for r in refs], hyps, metrics))
    except Exception as e:
        if type(e).__name__ != "JavaNotFoundError":
            raise
        metrics = [x for x in (metrics or ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")) if x in ("BLEU", "NIST")]
        print(f"warning: {e}; scoring {', '.join(metrics)} only", file=sys.stderr)
        res = dict(score([list(r) for r in refs], hyps, metrics))
    if callable(getattr(m, "signature", None)):
        res["signature"] = m.signature(metrics)
    return res


def _decode_cfg(run_cfg, overrides: dict) -> DecodeConfig:
    overrides = {k: v for k, v in overrides.items() if v is not None}
    valid = {f.name for f in dataclasses.fields(DecodeConfig)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"unknown decoding option(s) {unknown}; valid: {sorted(valid)}")
    return dataclasses.replace(run_cfg.decode, **overrides)


def _load_group(jobs: list[GenerateJob], device):
    """The base model, tokenizer and per-job prefixes of runs that share one model."""
    from .methods import load_run
    from .models import KVShape
    from .prefix import PREFIX_FILE, check_fits, load_prefix

    first = load_run(jobs[0].run_dir, device=device)
    prefixes = [first.prefix]
    for job in jobs[1:]:
        prefix, _ = load_prefix(job.run_dir / PREFIX_FILE)
        check_fits(prefix, KVShape.from_config(first.model.config), str(job.run_dir / PREFIX_FILE))
        prefixes.append(prefix.to(device))
    return first.model, first.tokenizer, prefixes


def generate_runs(run_dirs: Sequence[str | Path], split: str = "test", *, out: str | Path | None = None,
                  limit: int | None = None, mrs: str | Path | None = None, device: str = "cpu",
                  progress: bool = False, scores: bool = True, metrics: Sequence[str] | None = None,
                  **overrides) -> list[Path]:
    """Decode several run dirs; prefix runs over the same base model (and decoding settings) share batches.

    overrides: DecodeConfig fields (beam_size=..., precision=..., early_stopping=...), applied over each
    run's config.yaml (None values are ignored). scores: write scores-*.json when the MRs have references
    (metrics: a subset of BLEU, NIST, METEOR, ROUGE_L, CIDEr; default all). Returns the outputs file of each
    run (in the order given)."""
    from .config import load_config
    from .models import resolve_device

    if split not in ("train", "dev", "test"):
        raise ValueError(f"split must be train, dev or test, got {split!r}")
    if out is not None and len(run_dirs) > 1 and "{run}" not in str(out):
        raise ValueError("--out with several run dirs must contain '{run}' (replaced by each run dir's name)")
    dev = resolve_device(device)
    name = Path(mrs).stem if mrs is not None else split
    jobs, groups = [], {}
    for rd in map(Path, run_dirs):
        if not (rd / "config.yaml").is_file():
            raise FileNotFoundError(f"{rd}: not a run dir (no config.yaml)")
        cfg = load_config(rd / "config.yaml")
        dcfg = _decode_cfg(cfg, overrides)
        tables, refs = load_tables(split, cfg, limit=limit, mrs=mrs)
        job = GenerateJob(rd, cfg, dcfg, tables, refs, *output_paths(rd, name, out), split=name)
        jobs.append(job)
        shared = cfg.method.name == "prefix"
        key = ("prefix", cfg.model.name, cfg.model.revision) if shared else ("model", str(rd.resolve()))
        key += tuple(sorted(dataclasses.asdict(dcfg).items()))
        groups.setdefault(key, []).append(job)
    for group in groups.values():
        model, tokenizer, prefixes = _load_group(group, dev)
        d = group[0].decode_cfg
        threads = set_threads(d.num_threads)
        precision = resolve_precision(d.precision, dev)
        d = dataclasses.replace(d, precision=precision)
        if dtype_of(precision) is not None:
            model = model.to(dtype_of(precision))  # we own this model: native low precision, no autocast
        tables = [t for job in group for t in job.tables]
        index = [k for k, job in enumerate(group) for _ in job.tables]
        t0 = time.time()
        texts = decode(model, tokenizer, tables, prefixes if prefixes[0] is not None else None, d,
                       prefix_index=index if prefixes[0] is not None else None, progress=progress)
        seconds = time.time() - t0
        at = 0
        for job in group:
            hyps, at = texts[at:at + len(job.tables)], at + len(job.tables)
            _write_text(job.outputs, "".join(h + "\n" for h in hyps))
            if job.refs is not None:
                _write_text(job.refs_path, refs_text(job.refs))
                res = _score(job.refs, hyps, metrics) if scores else None
                if res is not None:
                    res.update(split=job.split, n_mrs=len(hyps), decode=dataclasses.asdict(d), threads=threads,
                               decode_seconds=round(seconds, 2),
                               decoded_with=[str(j.run_dir) for j in group])
                    _write_text(job.scores_path, json.dumps(res, indent=2) + "\n")
        del model
    return [job.outputs for job in jobs]


def generate_run(run_dir: str | Path, split: str = "test", out: str | Path | None = None, *,
                 limit: int | None = None, **kwargs) -> Path:
    """Decode one run dir (see `generate_runs`); returns the outputs file."""
    return generate_runs([run_dir], split, out=out, limit=limit, **kwargs)[0]


# ------------------------------------------------------------------------------------------------ CLI

GENERATE_HELP = """\
Decode the unique MRs of an E2E split with trained run dirs and write, per run dir,
RUN_DIR/outputs-SPLIT.txt (one line per unique MR, in order of first appearance),
RUN_DIR/refs-SPLIT.txt (references grouped per MR: consecutive lines, a blank line between MRs, the
official e2e-metrics format) and RUN_DIR/scores-SPLIT.json (BLEU, NIST, METEOR, ROUGE_L, CIDEr).
Several prefix runs over the same base model decode together in mixed batches (each row with its own
prefix, paper §4); fine-tuning runs (model.safetensors) decode with their own weights.

Decoding options default to the run's config.yaml `decode:` section, whose defaults follow Li & Liang's
E2E decoding (gpt2/run_generation.py of XiangLi1999/PrefixTuning): beam 5, 100 new tokens at most, EOS
banned before 5 new tokens, length penalty 1.0, newline tokens banned, no n-gram ban. Beam semantics
are Hugging Face generate's (early_stopping False by default, as the original used)."""


def add_generate_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("generate", help="decode E2E MRs with trained runs; write outputs, refs, scores",
                              description=GENERATE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run dir(s) holding config.yaml and "
                   "prefix.safetensors or model.safetensors")
    p.add_argument("--split", default="test", choices=("dev", "test", "train"),
                   help="E2E split whose unique MRs are decoded (default: test, as in the paper's Table 1)")
    p.add_argument("--mrs", metavar="FILE", help="decode the MRs of FILE instead (one `slot[value], ...` MR a "
                   "line; no references, so no scores); outputs go to RUN_DIR/outputs-<FILE stem>.txt")
    p.add_argument("--out", metavar="FILE", help="outputs file (default RUN_DIR/outputs-SPLIT.txt); refs and "
                   "scores go beside it; with several run dirs it must contain {run}")
    p.add_argument("--limit", type=int, metavar="N", help="decode only the first N unique MRs (default: all)")
    g = p.add_argument_group("decoding (default: the run's config.yaml decode section)")
    g.add_argument("--beam-size", type=int, metavar="K", help="beam width; 1 = greedy (default 5, Li & Liang)")
    g.add_argument("--greedy", action="store_true", help="greedy decoding, i.e. --beam-size 1")
    g.add_argument("--max-new-tokens", type=int, metavar="N", help="longest output in tokens "
                   "(default 100, the original's max length)")
    g.add_argument("--min-new-tokens", type=int, metavar="N", help="EOS banned before N new tokens "
                   "(default 5, the original's min length)")
    g.add_argument("--length-penalty", type=float, metavar="F", help="finished beam score = sum log p / "
                   "length**F, HF convention (default 1.0, the original's)")
    g.add_argument("--no-repeat-ngram-size", type=int, metavar="N", help="ban repeating an n-gram of the "
                   "generated text; 0 = off (default 0, the original's; the LoRA paper used 4)")
    g.add_argument("--allow-newlines", action="store_true", help="do not ban newline tokens (default: banned, "
                   "as the original bans GPT-2's 198 and 628; outputs stay one line either way)")
    g.add_argument("--early-stopping", choices=("false", "true", "never"), help="HF beam stopping rule: "
                   "false = stop a row when no running beam can beat its K finished ones (default, HF's and "
                   "the original's); true = stop as soon as K hypotheses finished; never = exhaustive bound")
    g.add_argument("--batch-size", type=int, metavar="N", help="MRs per batch; results do not depend on it "
                   "(default 16)")
    g.add_argument("--precision", choices=PRECISIONS, help="model dtype for decoding (default auto: bf16 where "
                   "the device computes it natively, i.e. CUDA or CPUs with AVX512-BF16/AMX, else fp32; fp32 "
                   "outputs do not depend on which rows share a batch)")
    g.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: the cores available "
                   "to this process)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 (default auto)")
    p.add_argument("--no-scores", action="store_true", help="write outputs and refs but do not score")
    p.add_argument("--metrics", metavar="LIST", help="comma-separated subset of BLEU,NIST,METEOR,ROUGE_L,CIDEr "
                   "(default: all five, as the official E2E scorer)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_generate)
    return p


def run_generate(args: argparse.Namespace) -> int:
    early = {None: None, "false": False, "true": True, "never": "never"}[args.early_stopping]
    try:
        paths = generate_runs(
            args.run_dirs, args.split, out=args.out, limit=args.limit, mrs=args.mrs, device=args.device,
            progress=not args.quiet, scores=not args.no_scores, early_stopping=early,
            metrics=args.metrics.split(",") if args.metrics else None,
            beam_size=1 if args.greedy else args.beam_size, max_new_tokens=args.max_new_tokens,
            min_new_tokens=args.min_new_tokens, length_penalty=args.length_penalty,
            no_repeat_ngram_size=args.no_repeat_ngram_size, ban_newlines=False if args.allow_newlines else None,
            batch_size=args.batch_size, precision=args.precision, num_threads=args.threads)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    name = Path(args.mrs).stem if args.mrs else args.split
    for rd, path in zip(args.run_dirs, paths):
        scores_path = output_paths(Path(rd), name, args.out)[2]
        line = str(path)
        if scores_path.is_file() and scores_path.stat().st_mtime >= path.stat().st_mtime - 1:
            res = json.loads(scores_path.read_text(encoding="utf-8"))
            line += "  " + "  ".join(f"{k} {res[k]:.4f}" for k in ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")
                                     if isinstance(res.get(k), (int, float)))
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m prefix_tuning.decode generate RUN_DIR ...` (the same command as `prefix-tuning generate`)."""
    parser = argparse.ArgumentParser(prog="python -m prefix_tuning.decode")
    add_generate_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
