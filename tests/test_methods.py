"""Table 1's methods and §7.3's embedding-only prefix through `build_method` / `save_artifact` / `load_run`, the
training loop and `generate`: only the method's tensors train and are stored, and they reload to identical logits."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from prefix_tuning.config import load_config, save_config
from prefix_tuning.generate import generate_runs
from prefix_tuning.methods import build_method, stored_numel
from prefix_tuning.models import build_tiny
from prefix_tuning.prefix import embedding_activations, prefix_inputs
from prefix_tuning.run import RunDir, load_run, save_artifact
from prefix_tuning.train import train

METHODS = {
    "finetune-top": ["method.name=finetune-top", "method.top_k_layers=1"],
    "adapter": ["method.name=adapter", "method.adapter_bottleneck=4"],
    "adapter-fraction": ["method.name=adapter", "method.adapter_fraction=0.01"],
    "lora": ["method.name=lora", "method.lora_rank=2"],
    "embedding-only": ["method.name=prefix", "method.embedding_only=true", "method.prefix_length=3"],
}
FILES = {"finetune-top": "top.safetensors", "adapter": "adapter.safetensors", "adapter-fraction": "adapter.safetensors",
         "lora": "lora.safetensors", "embedding-only": "prompt.safetensors"}
TINY = ["data.train_size=12", "data.dev_size=4", "data.max_length=64", "train.batch_size=4", "train.lr=1e-2",
        "train.precision=fp32", "decode.precision=fp32", "decode.beam_size=2", "decode.max_new_tokens=6",
        "decode.min_new_tokens=1"]


def _ids(B: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 50257, (B, T), generator=torch.Generator().manual_seed(seed))


def _logits(run_model, prefix, ids):
    kw = prefix_inputs(prefix, ids) if prefix is not None else {"input_ids": ids}
    return run_model(**kw).logits


@pytest.mark.parametrize("model_name", ["tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("method_name", list(METHODS))
def test_step_touches_only_the_method_and_reloads(method_name, model_name, tmp_path):
    """Two AdamW steps: gradients reach only the method's tensors, every other weight stays bit-identical;
    the artifact holds exactly those tensors; `load_run` (fresh base model + artifact) gives identical logits."""
    cfg = load_config(None, [f"model.name={model_name}", f"out_dir={tmp_path}", *METHODS[method_name]])
    model = build_tiny(model_name)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    method = build_method(cfg.method, model, None, seed=cfg.train.seed)
    params = method.trainable()
    trained = {id(p) for p in params}
    opt = torch.optim.AdamW(params, lr=1e-2)
    ids = _ids(2, 7)
    method.train_mode(False)
    for _ in range(2):
        logits = method.forward(ids, torch.ones_like(ids))
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in model.parameters() if id(p) not in trained)
        assert params and all(p.grad is not None for p in params)  # LoRA's A: zero at step 1 (B starts at 0)
        assert any(p.grad.abs().sum() > 0 for p in params)
        opt.step()
    state = model.state_dict()
    changed = {k for k in base if not torch.equal(state[k], base[k])}
    assert changed == ({k for k in base if k.startswith(("transformer.h.1.", "model.layers.1."))}
                       if method_name == "finetune-top" else set())
    method.eval_mode()
    save_config(cfg, RunDir(tmp_path).config)
    path = save_artifact(RunDir(tmp_path), method, cfg)
    assert path.name == FILES[method_name]
    stored = load_file(str(path))
    n_stored = sum(v.numel() for v in stored.values())
    assert n_stored == stored_numel(cfg, model, getattr(method.encoder, "length", None))
    if method.encoder is None:
        assert set(stored) == {n for n, p in model.named_parameters() if p.requires_grad}
        assert n_stored < sum(p.numel() for p in build_tiny(model_name).parameters())
    run = load_run(tmp_path)
    with torch.no_grad():
        expected = method.forward(ids, torch.ones_like(ids))
        assert torch.equal(_logits(run.model, run.prefix, ids), expected)
        assert (_logits(build_tiny(model_name), None, ids) - expected).abs().max() > 1e-4  # the method matters


@pytest.mark.parametrize("model_name", ["tiny-gpt2", "tiny-llama"])
def test_embedding_activations_equal_prepended_embeddings(model_name):
    """§7.3: tokens after the keys/values of P input embeddings get the logits of one sequence [E; x]
    (GPT-2 adds absolute positions 0..P-1 to E, Llama rotates them; both are covered)."""
    model = build_tiny(model_name)
    E = torch.randn(4, model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    ids = _ids(2, 6)
    full = model(inputs_embeds=torch.cat([E.expand(2, -1, -1), model.get_input_embeddings()(ids)], 1)).logits
    got = model(**prefix_inputs(embedding_activations(model, E), ids)).logits
    assert (got - full[:, 4:]).abs().max() <= 1e-5
    assert (model(input_ids=ids).logits - full[:, 4:]).abs().max() > 1e-3


def test_train_and_generate_every_method(tmp_path, data_dir):
    """The training loop + `generate` on real E2E MRs for each method; prefix and embedding-only runs decode in
    one call (grouped apart: their artifacts differ); outputs equal a separate decode of each run."""
    dirs = []
    for name, args in [("prefix", ["method.prefix_length=2", "method.mlp_hidden=8"])] + \
            [(m, METHODS[m]) for m in ("adapter", "lora", "finetune-top", "embedding-only")]:
        res = train(load_config(None, ["model.name=tiny-gpt2", "train.max_steps=2", f"out_dir={tmp_path / name}",
                                       *TINY, *args]))
        assert res.artifact.name == FILES.get(name, "prefix.safetensors") and res.artifact.is_file()
        assert not (res.run_dir / "model.safetensors").exists()
        dirs.append(res.run_dir)
    together = generate_runs(dirs, "test", limit=3, scores=False)
    texts = [f.outputs.read_text() for f in together]
    assert all(len(t.splitlines()) == 3 for t in texts)
    alone = generate_runs([dirs[-1]], "test", out=tmp_path / "alone-outputs.txt", limit=3, scores=False)
    assert alone[0].outputs.read_text() == texts[-1]
