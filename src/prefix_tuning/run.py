"""The run directory: every file a run writes or reads is named here, and loaded or saved here.

    RUN_DIR/
      config.yaml               the resolved config: enough to rebuild the model and decode (litgpt's habit)
      log.jsonl                 training log (step, loss, lr, tokens/s; dev loss per epoch)
      checkpoints/last.safetensors  resumable training state (written and read by `train`)
      prefix.safetensors        the artifact of a prefix run: only the collapsed prefix (paper §4.3)
      prompt.safetensors        ... of an embedding-only run (§7.2): the (P, d) input embeddings
      infix.safetensors         ... of an infix run (§7.3): its activations, in prefix.safetensors' format
      model.safetensors         ... of a fine-tuning run: the whole model
      top.safetensors           ... of FT-top2: its trained blocks (loaded over the base model)
      adapter.safetensors       ... of an adapter run: the adapters only
      lora.safetensors          ... of a LoRA run: the LoRA tensors only
      outputs-NAME.txt          `generate` of split (or MR file) NAME: one output per unique MR,
      refs-NAME.txt             the references grouped per MR (official e2e-metrics format),
      scores-NAME.json          and the metrics
      result.json               `reproduce`: the run's result, whose test decode has its own files:
      result-{outputs,refs}-test.txt, result-scores-test.json

Everything is written atomically (`checkpoint.atomic_path`): a kill never leaves half a file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model as load_safetensors
from safetensors.torch import save_model as save_safetensors
from torch import Tensor, nn

from .adapter import ADAPTER_FILE
from .checkpoint import CorruptFileError, atomic_path, describe_unreadable
from .config import MethodConfig, RunConfig
from .configfile import load_config
from .lora import LORA_FILE
from .methods import Method, build_method
from .models import KVShape, load_model, load_tokenizer
from .prefix import check_fits, embedding_activations, load_prefix, save_prefix
from .state import load_state, read_state, save_state, select_state

ARTIFACTS = {
    "prefix": "prefix.safetensors",
    "finetune": "model.safetensors",
    "finetune-top": "top.safetensors",
    "adapter": ADAPTER_FILE,
    "lora": LORA_FILE,
}
"""The file each method keeps after training, in the run dir."""
PROMPT_FILE, INFIX_FILE = "prompt.safetensors", "infix.safetensors"


def artifact_name(cfg: MethodConfig) -> str:
    if cfg.name == "prefix" and (cfg.embedding_only or cfg.position == "infix"):
        return PROMPT_FILE if cfg.embedding_only else INFIX_FILE
    return ARTIFACTS[cfg.name]


@dataclass(frozen=True)
class DecodeFiles:
    """Where one decode of a run goes."""

    outputs: Path
    refs: Path
    scores: Path


@dataclass(frozen=True)
class RunDir:
    """The paths of a run directory (see the module docstring)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def log(self) -> Path:
        return self.path / "log.jsonl"

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoints" / "last.safetensors"

    @property
    def pickle_checkpoint(self) -> Path:
        """Where versions before safetensors checkpoints kept theirs (refused, never unpickled)."""
        return self.path / "checkpoints" / "last.pt"

    @property
    def prefix(self) -> Path:
        return self.path / "prefix.safetensors"

    @property
    def model(self) -> Path:
        return self.path / "model.safetensors"

    def artifact(self, cfg: RunConfig) -> Path:
        """What the run's method keeps after training (`ARTIFACTS`)."""
        return self.path / artifact_name(cfg.method)

    @property
    def result(self) -> Path:
        return self.path / "result.json"

    @property
    def result_decoded(self) -> DecodeFiles:
        """The test decode that result.json scores: its own files, which a later `generate RUN_DIR` (writing
        outputs-test.txt) leaves alone."""
        return self.decoded("test", self.path / "result-outputs-test.txt")

    def decoded(self, name: str, out: str | Path | None = None) -> DecodeFiles:
        """`RUN_DIR/{outputs,refs}-NAME.txt` and `RUN_DIR/scores-NAME.json` by default; with `out` (`{run}`
        replaced by the run dir's name) the outputs go there and the refs and scores beside them."""
        if out is None:
            return DecodeFiles(
                self.path / f"outputs-{name}.txt", self.path / f"refs-{name}.txt", self.path / f"scores-{name}.json"
            )
        out = Path(str(out).replace("{run}", self.path.name))
        if "outputs" in out.stem:
            return DecodeFiles(
                out,
                out.with_name(out.name.replace("outputs", "refs", 1)),
                out.with_name(out.stem.replace("outputs", "scores", 1) + ".json"),
            )
        return DecodeFiles(out, out.with_name(out.stem + ".refs.txt"), out.with_name(out.stem + ".scores.json"))


# ------------------------------------------------------------------------------------------ reading


def read_config(run: RunDir) -> RunConfig:
    if not run.config.is_file():
        raise FileNotFoundError(f"{run.path}: not a run dir (no config.yaml); train one with `prefix-tuning train`")
    return load_config(run.config)


def read_prefix(run: RunDir, shape: KVShape, device: str | torch.device = "cpu") -> Tensor:
    """The run's prefix (L, 2, KV, P, D), checked against the model it is going to run with."""
    if not run.prefix.is_file():
        raise FileNotFoundError(
            f"{run.prefix} missing: training did not finish (resume with `prefix-tuning train {run.config}`)"
        )
    prefix, _ = load_prefix(run.prefix)
    check_fits(prefix, shape, str(run.prefix))
    return prefix.to(device)


@dataclass
class LoadedRun:
    cfg: RunConfig
    model: nn.Module
    tokenizer: object
    prefix: Tensor | None  # (L, 2, KV, P, D) for prefix runs (embedding-only: its embeddings' activations;
    # infix runs: the infix, to decode with `decode(..., position=cfg.method.position)`)


def load_run(run_dir: str | Path, *, device: str | torch.device = "cpu") -> LoadedRun:
    """Rebuild a trained run from its folder alone: config.yaml + its artifact over the base model.

    A prefix run gives its prefix (no MLP), an embedding-only run the prefix its embeddings make; methods that
    store part of the model (FT-top2, adapter, LoRA) are rebuilt on the base model and their tensors loaded."""
    run = RunDir(run_dir)
    cfg = read_config(run)
    model = load_model(cfg.model.name, revision=cfg.model.revision)
    tokenizer = load_tokenizer(cfg.model.name, cfg.data.dir)
    path = run.artifact(cfg)
    prefix = None
    if path == run.prefix:
        prefix = read_prefix(run, KVShape.from_config(model.config), device)
    elif not path.is_file():
        raise FileNotFoundError(
            f"{path} missing: training did not finish (resume with `prefix-tuning train {run.config}`)"
        )
    elif cfg.method.position == "infix":  # decoded with `decode(..., position="infix")`
        prefix, _ = load_prefix(path)
        check_fits(prefix, KVShape.from_config(model.config), str(path))
        prefix = prefix.to(device)
    elif cfg.method.name == "prefix":  # embedding-only
        emb = read_state(path)["embedding"]  # (P, d)
        if emb.dim() != 2 or emb.shape[1] != model.config.get_text_config().hidden_size:
            raise ValueError(f"{path}: embeddings of shape {tuple(emb.shape)} do not fit {cfg.model.name}")
        with torch.no_grad():
            prefix = embedding_activations(model.eval(), emb).float().to(device)
    elif cfg.method.name == "finetune":
        try:
            load_safetensors(model, str(path))
        except SafetensorError as e:
            raise CorruptFileError(
                f"{path} {describe_unreadable(path, e)}; restore it from a copy, or "
                f"delete it and train the run again with --no-resume"
            ) from None
    else:
        method = build_method(cfg.method, model, tokenizer, seed=cfg.train.seed)
        load_state(model, read_state(path), method.stored, what=f"{cfg.method.name} state")
    model.requires_grad_(False)
    return LoadedRun(cfg, model.to(device).eval(), tokenizer, prefix)


def read_log(run: RunDir) -> list[dict]:
    """The records of the run's log.jsonl, in order (start lines, one per step, dev losses)."""
    return [json.loads(line) for line in run.log.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_result(run: RunDir) -> dict | None:
    """result.json of a finished reproduce run, or None."""
    return json.loads(run.result.read_text(encoding="utf-8")) if run.result.is_file() else None


# ------------------------------------------------------------------------------------------ writing


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, obj: object, indent: int = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def artifact_meta(cfg: RunConfig) -> dict[str, str]:
    """The metadata of a model file (whole model or part of it)."""
    return {"base_model": cfg.model.name, "method": cfg.method.name}


def save_artifact(run: RunDir, method: Method, cfg: RunConfig) -> Path:
    """Store what the method keeps after training (`ARTIFACTS`): the collapsed prefix, the prompt embeddings,
    the method's part of the model, or every weight of the model."""
    path, meta = run.artifact(cfg), artifact_meta(cfg)
    if method.embedding_only:
        save_state({"embedding": method.encoder.collapse()}, path, {**meta, "shape": "P,d", "embedding_only": "true"})
    elif method.encoder is not None:
        save_prefix(
            method.encoder.collapse(),
            path,
            base_model=cfg.model.name,
            extra={"method": cfg.method.name, "prefix_length": method.encoder.length, "position": cfg.method.position},
        )
    elif method.stored is not None:
        save_state(select_state(method.model, method.stored), path, meta)
    else:
        with atomic_path(path) as tmp:
            save_safetensors(method.model, str(tmp), metadata=meta)
    return path


def refs_text(refs: Sequence[Sequence[str]]) -> str:
    """The official grouped reference format: refs of one MR on consecutive lines, a blank line between MRs."""
    return "\n\n".join("\n".join(r.replace("\n", " ") for r in group) for group in refs) + "\n"


def write_decoded(
    files: DecodeFiles, hyps: Sequence[str], refs: Sequence[Sequence[str]] | None = None, scores: dict | None = None
) -> None:
    """One output per line; the grouped references and the scores when there are any."""
    write_text(files.outputs, "".join(h + "\n" for h in hyps))
    if refs is not None:
        write_text(files.refs, refs_text(refs))
    if scores is not None:
        write_json(files.scores, scores)


def write_result(run: RunDir, result: dict) -> None:
    write_json(run.result, result, indent=1)
