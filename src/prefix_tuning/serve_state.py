"""What the server holds (`ServerState`): one frozen base model cast to its precision, its tokenizer, the
prefixes by name (run dirs, folders of run dirs or prefix files, added and removed while running) and the
continuous-batching engine; `load_state` builds it once at start-up."""

import dataclasses
import logging
import threading
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from .data import eos_id_of
from .engine import Engine
from .hardware import dtype_of, resolve_precision, set_threads
from .models import KVShape, load_model, load_tokenizer, resolve_device
from .prefix import check_fits, load_prefix
from .run import RunDir, load_run, read_config
from .serve_api import ApiError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ServerState:
    """Everything the handlers need: the model, its tokenizer, the prefixes by name, the engine, defaults."""

    model: nn.Module
    tokenizer: object
    model_id: str
    engine: Engine
    precision: str = "fp32"
    prefixes: dict[str, Tensor] = dataclasses.field(default_factory=dict)  # name -> (L, 2, KV, P, D)
    paths: dict[str, str] = dataclasses.field(default_factory=dict)
    max_tokens: int = 100
    min_tokens: int = 5
    max_context: int = 2048
    drain_s: float = 30.0
    created: int = dataclasses.field(default_factory=lambda: int(time.time()))
    beam_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    beam_waiting: int = 0
    prefix_updates: bool = True  # POST/DELETE /v1/prefixes allowed

    def add_prefix(self, name: str, path: str | Path, replace: bool = False) -> Tensor:
        if name == self.model_id:
            raise ApiError(409, f"'{name}' is the base model's name", "name")
        if name in self.prefixes and not replace:
            raise ApiError(409, f"a prefix named '{name}' exists (send \"replace\": true to swap it)", "name")
        file = prefix_file(Path(path))
        try:
            prefix, meta = load_prefix(file)
            check_fits(prefix, KVShape.from_config(self.model.config), str(file))
        except (OSError, ValueError) as e:
            raise ApiError(400, f"cannot load prefix from {path}: {e}", "path") from None
        base = meta.get("base_model")
        if base and base != self.model_id:
            log.warning("prefix %s was trained on %s, serving it on %s", name, base, self.model_id)
        self.prefixes[name] = prefix.to(next(self.model.parameters()).device)
        self.paths[name] = str(file)
        return self.prefixes[name]


def prefix_file(path: Path) -> Path:
    return RunDir(path).prefix if path.is_dir() else path


def prefix_name(path: Path) -> str:
    """A prefix's default name: its run dir's name (the file's stem for another .safetensors file)."""
    if path.is_dir():
        return path.resolve().name
    return path.parent.resolve().name if path == RunDir(path.parent).prefix else path.stem


def find_prefixes(paths: list[str]) -> list[tuple[str, Path]]:
    """(name, file) for each run dir, folder of run dirs, or prefix file; name = run dir (or file stem)."""
    found = []
    for p in map(Path, paths):
        if p.is_file() or RunDir(p).prefix.is_file():
            found.append((prefix_name(p), prefix_file(p)))
        elif p.is_dir():
            subs = sorted(d for d in p.iterdir() if RunDir(d).prefix.is_file())
            if not subs:
                raise FileNotFoundError(f"{p}: no {RunDir(p).prefix.name} in it or in its subfolders")
            found += [(d.name, RunDir(d).prefix) for d in subs]
        else:
            raise FileNotFoundError(f"{p}: no such run dir or prefix file")
    names = [n for n, _ in found]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"several prefixes named {dup}: pass them so that their run dirs have distinct names")
    return found


def load_state(
    model: str,
    prefixes: list[str],
    *,
    device: str = "auto",
    precision: str = "auto",
    threads: int | None = None,
    max_batch: int = 64,
    max_waiting: int = 256,
    max_tokens: int = 100,
    min_tokens: int = 5,
    drain_s: float = 30.0,
    step_sleep: float = 0.0,
) -> ServerState:
    """Load the base model once (cast to the resolved precision) and every prefix."""
    set_threads(threads)
    dev = resolve_device(device)
    extra: list[str] = []
    run = RunDir(model)
    if run.config.is_file():  # a run dir: its base model with its trained part, or its prefix added
        if read_config(run).method.embedding_only or read_config(run).method.position == "infix":
            raise ValueError(
                f"{run.path}: embedding-only and infix runs cannot be served yet; decode them with "
                "`prefix-tuning generate`"
            )
        loaded = load_run(run.path)
        m, tok = loaded.model, loaded.tokenizer
        model_id = loaded.cfg.model.name if loaded.prefix is not None else run.path.resolve().name
        extra = [str(run.path)] if loaded.prefix is not None else []
    else:
        m, tok, model_id = load_model(model), load_tokenizer(model), model
    prec = resolve_precision(precision, dev)
    m = m.to(device=dev, dtype=dtype_of(prec) or torch.float32).eval().requires_grad_(False)
    eos = eos_id_of(tok)
    engine = Engine(
        m, eos_id=eos, pad_id=tok.pad_token_id, max_batch=max_batch, max_waiting=max_waiting, step_sleep=step_sleep
    )
    cfg_ = m.config.get_text_config() if hasattr(m.config, "get_text_config") else m.config
    ctx = getattr(cfg_, "max_position_embeddings", None) or getattr(cfg_, "n_positions", None) or 2048
    state = ServerState(
        m,
        tok,
        model_id,
        engine,
        prec,
        max_tokens=max_tokens,
        min_tokens=min_tokens,
        max_context=int(ctx),
        drain_s=drain_s,
    )
    for n, f in find_prefixes(extra + list(prefixes)):
        state.add_prefix(n, f)
    return state
