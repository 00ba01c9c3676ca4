"""Adapter (Lin et al. 2020) and LoRA (Hu et al. 2021) baselines on tiny random GPT-2 and Llama (GQA) models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prefix_tuning.adapter import (
    adapter_numel,
    adapter_state,
    add_adapters,
    base_numel,
    bottleneck_for_fraction,
    load_adapter,
    load_adapter_state,
    save_adapter,
)
from prefix_tuning.beam import SearchSettings, search
from prefix_tuning.config import DecodeConfig
from prefix_tuning.lora import add_lora, load_lora, lora_state, merge_lora, save_lora
from prefix_tuning.models import build_tiny

MODELS = ["tiny-gpt2", "tiny-llama"]
METHODS = ["adapter", "lora"]
EOS = 50256


def _ids(B: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 50257, (B, T), generator=torch.Generator().manual_seed(seed))


def _add(method: str, model: nn.Module, seed: int = 0, dropout: float = 0.0) -> list[nn.Module]:
    """Add the method to a frozen model; LoRA's B is made non-zero so that it changes the logits."""
    model.requires_grad_(False)
    torch.manual_seed(seed)
    if method == "adapter":
        return add_adapters(model, 8)
    mods = add_lora(model, rank=4, alpha=32, dropout=dropout)
    with torch.no_grad():
        for m in mods:
            m.B.normal_(0, 0.2)
    return mods


def _state(method: str, model: nn.Module) -> dict[str, torch.Tensor]:
    return adapter_state(model) if method == "adapter" else lora_state(model)


def _meta_gpt2_medium() -> nn.Module:
    from transformers import AutoModelForCausalLM, GPT2Config

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(GPT2Config(n_embd=1024, n_layer=24, n_head=16, vocab_size=50257))


def test_trainable_counts_gpt2_medium():
    """GPT-2 Medium on the meta device (no weights). Golden values: GPT-2 Medium has 354,823,168 parameters
    (tied LM head counted once); an adapter of width b has L (2 d b + b + 3 d) = 49,176 b + 73,728 parameters;
    LoRA r=4 on q and v: 24 layers x 2 x (A 4x1024 + B 1024x4) = 393,216. The LoRA paper's Table 3 says 0.35M,
    which the formula does not give (microsoft/LoRA issue #172: the reference code has 393,216 too)."""
    model = _meta_gpt2_medium()
    assert base_numel(model) == 354_823_168
    counts = {}
    for fraction, b, numel in [(0.03, 215, 10_646_568), (0.001, 6, 368_784)]:
        got_b = bottleneck_for_fraction(model, fraction)
        counts[f"adapter-{fraction:.1%}"] = (got_b, adapter_numel(model, got_b))
        assert (got_b, adapter_numel(model, got_b)) == (b, numel)
        # nearest width: one unit wider or narrower is farther from the target
        target = fraction * base_numel(model)
        assert all(abs(adapter_numel(model, w) - target) > abs(numel - target) for w in (b - 1, b + 1))
    add_adapters(model, 215)
    assert sum(p.numel() for n, p in model.named_parameters() if ".adapter." in n) == 10_646_568
    assert base_numel(model) == 354_823_168  # adapters are not counted as base

    model = _meta_gpt2_medium()
    add_lora(model, rank=4, alpha=32)
    n_lora = sum(p.numel() for n, p in model.named_parameters() if ".lora." in n)
    counts["lora r=4 q,v"] = n_lora
    print(f"\nGPT-2 Medium trainable parameters: {counts}")
    assert n_lora == 393_216
    assert not any(".lora." in n for n, _ in model.named_parameters() if "c_proj" in n or "mlp" in n)


def test_lora_count_tiny_llama_gqa():
    """v_proj of a grouped-query model is narrower: q 32->32, v 32->16 (2 kv heads x 8)."""
    model = build_tiny("tiny-llama")
    add_lora(model, rank=4)
    per_layer = (4 * 32 + 32 * 4) + (4 * 32 + 16 * 4)
    assert sum(p.numel() for n, p in model.named_parameters() if ".lora." in n) == 2 * per_layer


@pytest.mark.parametrize("name", MODELS)
def test_zero_update_is_the_base_model(name):
    """LoRA starts with B = 0, and an adapter with a zero up-projection is the identity: logits equal the base
    model's exactly. Negative controls: a non-zero B, and the adapter's original init (N(0, 0.02) up-projection,
    not the identity) change them."""
    ids = _ids(2, 9)
    base = build_tiny(name)(input_ids=ids).logits
    model = build_tiny(name)
    add_lora(model, rank=4, alpha=32)
    assert torch.equal(model(input_ids=ids).logits, base)
    with torch.no_grad():
        model.get_submodule(
            "model.layers.0.self_attn.v_proj" if name == "tiny-llama" else "transformer.h.0.attn.c_attn"
        ).lora.B.add_(0.1)
    assert (model(input_ids=ids).logits - base).abs().max() > 1e-3

    model = build_tiny(name)
    adapters = add_adapters(model, 8)
    assert (model(input_ids=ids).logits - base).abs().max() > 1e-3
    with torch.no_grad():
        for a in adapters:
            a.up.weight.zero_()
            a.up.bias.zero_()
    assert torch.equal(model(input_ids=ids).logits, base)


@pytest.mark.parametrize("name", MODELS)
def test_adapter_sits_after_the_block(name):
    """Only the last block's adapter active: logits = lm_head(final_norm(adapter(h))) with h the base model's
    last block output (modeling_gpt2_adapter.py Block.forward_oneAdapter: after the MLP residual)."""
    ids = _ids(2, 7)
    base = build_tiny(name)
    got = {}
    base.get_submodule("transformer.h" if name == "tiny-gpt2" else "model.layers")[-1].register_forward_hook(
        lambda m, a, out: got.setdefault("h", out[0] if isinstance(out, tuple) else out)
    )
    base(input_ids=ids)
    model = build_tiny(name)
    torch.manual_seed(0)
    adapters = add_adapters(model, 8)
    with torch.no_grad():
        for a in adapters[:-1]:
            a.up.weight.zero_()
            a.up.bias.zero_()
    a = adapters[-1]
    h = got["h"]  # (B, T, d)
    manual = h + a.up(torch.relu(a.down(nn.functional.layer_norm(h, h.shape[-1:], a.ln.weight, a.ln.bias, a.ln.eps))))
    norm = model.transformer.ln_f if name == "tiny-gpt2" else model.model.norm
    expected = model.lm_head(norm(manual))
    assert (model(input_ids=ids).logits - expected).abs().max() <= 1e-5
    # negative control: the adapter applied before the block's MLP residual would not match
    assert (model.lm_head(norm(h)) - expected).abs().max() > 1e-3


def test_lora_gpt2_updates_q_and_v_slices_only():
    """Golden: microsoft/LoRA MergedLinear(enable_lora=[True, False, True], fan_in_fan_out=True):
    [q | k | v] = x W + b, then q += s x A_q^T B_q^T and v += s x A_v^T B_v^T with s = alpha / r; k unchanged."""
    model = build_tiny("tiny-gpt2")
    (lora, *_) = _add("lora", model)
    c_attn = model.transformer.h[0].attn.c_attn
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(1))
    q, k, v = (x @ c_attn.weight + c_attn.bias).split(32, dim=-1)  # (B, T, d) each
    s = 32 / 4
    q = q + s * x @ lora.A[0].T @ lora.B[0].T
    v = v + s * x @ lora.A[1].T @ lora.B[1].T
    out = c_attn(x)
    assert (out - torch.cat([q, k, v], -1)).abs().max() <= 1e-5
    assert torch.equal(out[..., 32:64], (x @ c_attn.weight + c_attn.bias)[..., 32:64])  # k: no update at all


def test_lora_llama_matches_peft():
    """On Llama (separate q_proj/v_proj) our LoRA gives PEFT 0.21's logits for the same A and B."""
    from peft import LoraConfig, inject_adapter_in_model

    ids = _ids(2, 8)
    ours = build_tiny("tiny-llama")
    _add("lora", ours)
    ref = inject_adapter_in_model(
        LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"]), build_tiny("tiny-llama")
    )
    with torch.no_grad():
        for name, mod in ours.named_modules():
            if hasattr(mod, "lora"):
                peft_mod = ref.get_submodule(name)
                peft_mod.lora_A["default"].weight.copy_(mod.lora.A[0])  # (r, d_in)
                peft_mod.lora_B["default"].weight.copy_(mod.lora.B[0])  # (d_out, r)
    ref.eval()
    assert (ours(input_ids=ids).logits - ref(input_ids=ids).logits).abs().max() <= 1e-5


def _lm_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids).logits[:, :-1]  # (B, T-1, V)
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", MODELS)
def test_training_touches_only_the_method(method, name):
    """A plain AdamW loop (train mode, LoRA dropout on): only the method's tensors get gradients, the base
    weights stay bit-identical, the loss goes down; merged LoRA weights give the unmerged logits."""
    model = build_tiny(name)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    _add(method, model, dropout=0.1)
    params = [p for p in model.parameters() if p.requires_grad]
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == set(_state(method, model)) and names  # trainable = what is stored
    before = {k: v.clone() for k, v in _state(method, model).items()}
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01)
    ids = _ids(4, 12, seed=3)
    model.train()
    losses = []
    for _ in range(5):
        loss = _lm_loss(model, ids)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for n, p in model.named_parameters() if n not in names)
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
        opt.step()
        losses.append(loss.item())
    model.eval()
    assert _lm_loss(model, ids).item() < losses[0]
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in base.items())
    assert all(not torch.equal(_state(method, model)[k], v) for k, v in before.items())
    if method == "lora":
        unmerged = model(input_ids=ids).logits
        merge_lora(model)
        merge_lora(model)  # a second merge is a no-op
        merged = model(input_ids=ids).logits
        assert (merged - unmerged).abs().max() <= 1e-5
        assert any(not torch.equal(model.state_dict()[k], v) for k, v in base.items())  # weights did change
        merge_lora(model, False)
        assert all((model.state_dict()[k] - v).abs().max() <= 1e-5 for k, v in base.items())
        assert (model(input_ids=ids).logits - unmerged).abs().max() <= 1e-5


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", MODELS)
def test_save_load_roundtrip(method, name, tmp_path):
    """Only the method's tensors are stored; a fresh base model + the file gives identical logits."""
    from safetensors import safe_open

    ids = _ids(2, 6)
    model = build_tiny(name)
    _add(method, model, seed=5)
    path = tmp_path / "m.safetensors"
    (save_adapter if method == "adapter" else save_lora)(model, path, metadata={"base_model": name})
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(_state(method, model))
        assert f.metadata()["base_model"] == name
    fresh = build_tiny(name)
    meta = (load_adapter if method == "adapter" else load_lora)(fresh, path)
    assert meta["method"] == method
    assert torch.equal(fresh(input_ids=ids).logits, model(input_ids=ids).logits)
    # negative control: a differently shaped method does not load
    other = build_tiny(name)
    if method == "adapter":
        add_adapters(other, 4)
        with pytest.raises(ValueError, match="bottleneck"):
            load_adapter_state(other, adapter_state(model))
    else:
        add_lora(other, rank=2)
        with pytest.raises(ValueError, match="rank"):
            load_lora(other, path)


def _greedy_full(model: nn.Module, prompt: list[int], n: int) -> tuple[list[int], torch.Tensor]:
    """Reference: recompute the whole sequence for every token, no cache; stops at EOS like `search`."""
    seq = list(prompt)
    for _ in range(n):
        logits = model(input_ids=torch.tensor([seq])).logits[0, -1]  # (V,)
        seq.append(int(logits.argmax()))
        if seq[-1] == EOS:
            return seq[len(prompt) : -1], logits
    return seq[len(prompt) :], logits


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", MODELS)
@torch.inference_mode()
def test_cached_decode_matches_full_recompute(method, name):
    """Greedy step by step through a DynamicCache with explicit position_ids (the call of beam.py), and the
    project's batched left-padded search, give the tokens and logits of full recomputation."""
    from transformers import DynamicCache

    model = build_tiny(name)
    _add(method, model, seed=2)
    prompt, n = _ids(1, 6, seed=7)[0].tolist(), 8
    cache = DynamicCache(config=model.config)
    T = len(prompt)
    mask = torch.ones(1, T, dtype=torch.long)
    out = model(
        input_ids=torch.tensor([prompt]),
        attention_mask=mask,
        position_ids=torch.arange(T)[None],
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    toks = []
    for step in range(n):
        tok = int(out.logits[0, -1].argmax())
        toks.append(tok)
        mask = torch.ones(1, T + step + 1, dtype=torch.long)
        out = model(
            input_ids=torch.tensor([[tok]]),
            attention_mask=mask,
            position_ids=torch.tensor([[T + step]]),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
    ref_toks, _ = _greedy_full(model, prompt, n + 1)
    full = model(input_ids=torch.tensor([prompt + toks])).logits[0, -1]
    assert toks == ref_toks[:n]
    assert (out.logits[0, -1] - full).abs().max() <= 1e-4
    base_full = build_tiny(name)(input_ids=torch.tensor([prompt + toks])).logits[0, -1]
    assert (base_full - full).abs().max() > 1e-3  # negative control: the method does change the model

    prompts = [prompt, _ids(1, 3, seed=8)[0].tolist(), _ids(1, 9, seed=9)[0].tolist()]
    s = SearchSettings.from_config(DecodeConfig(beam_size=1, max_new_tokens=6, min_new_tokens=0), eos_id=EOS)
    got = search(model, prompts, None, s, pad_id=EOS)
    assert got == [_greedy_full(model, p, 6)[0] for p in prompts]
