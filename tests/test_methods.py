"""Table 1's methods and §7.2's embedding-only prefix through `build_method` / `save_artifact` / `load_run`, the
training loop and `generate`: only the method's tensors train and are stored, and they reload to identical logits."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from prefix_tuning.beam import SearchSettings, search
from prefix_tuning.config import DecodeConfig
from prefix_tuning.configfile import load_config, save_config
from prefix_tuning.data import encode_example, encode_prompt
from prefix_tuning.decode import decode, ids_to_text
from prefix_tuning.generate import generate_runs
from prefix_tuning.infix import infix_logits
from prefix_tuning.methods import build_method, stored_numel
from prefix_tuning.models import build_tiny, load_tokenizer
from prefix_tuning.prefix import activations_of, embedding_activations, prefix_inputs
from prefix_tuning.run import RunDir, load_run, save_artifact
from prefix_tuning.train import train

METHODS = {
    "finetune-top": ["method.name=finetune-top", "method.top_k_layers=1"],
    "adapter": ["method.name=adapter", "method.adapter_bottleneck=4"],
    "adapter-fraction": ["method.name=adapter", "method.adapter_fraction=0.01"],
    "lora": ["method.name=lora", "method.lora_rank=2"],
    "embedding-only": ["method.name=prefix", "method.embedding_only=true", "method.prefix_length=3"],
    "embedding-only-direct": [
        "method.name=prefix",
        "method.embedding_only=true",
        "method.prefix_length=3",
        "method.reparam=false",
    ],
}
FILES = {
    "finetune-top": "top.safetensors",
    "adapter": "adapter.safetensors",
    "adapter-fraction": "adapter.safetensors",
    "lora": "lora.safetensors",
    "embedding-only": "prompt.safetensors",
    "embedding-only-direct": "prompt.safetensors",
    "infix": "infix.safetensors",
}
TINY = [
    "data.train_size=12",
    "data.dev_size=4",
    "data.max_length=64",
    "train.batch_size=4",
    "train.lr=1e-2",
    "train.precision=fp32",
    "decode.precision=fp32",
    "decode.beam_size=2",
    "decode.max_new_tokens=6",
    "decode.min_new_tokens=1",
]


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
    assert changed == (
        {k for k in base if k.startswith(("transformer.h.1.", "model.layers.1."))}
        if method_name == "finetune-top"
        else set()
    )
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
    """§7.2: tokens after the keys/values of P input embeddings get the logits of one sequence [E; x]
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
    for name, args in (
        [("prefix", ["method.prefix_length=2", "method.mlp_hidden=8"])]
        + [(m, METHODS[m]) for m in ("adapter", "lora", "finetune-top", "embedding-only")]
        + [("infix", ["method.position=infix", "method.prefix_length=2", "method.mlp_hidden=8"])]
    ):
        res = train(
            load_config(None, ["model.name=tiny-gpt2", "train.max_steps=2", f"out_dir={tmp_path / name}", *TINY, *args])
        )
        assert res.artifact.name == FILES.get(name, "prefix.safetensors") and res.artifact.is_file()
        assert not (res.run_dir / "model.safetensors").exists()
        dirs.append(res.run_dir)
    together = generate_runs(dirs, "test", limit=3, scores=False)
    texts = [f.outputs.read_text() for f in together]
    assert all(len(t.splitlines()) == 3 for t in texts)
    alone = generate_runs([dirs[-1]], "test", out=tmp_path / "alone-outputs.txt", limit=3, scores=False)
    assert alone[0].outputs.read_text() == texts[-1]


TABLES = ["name : The Eagle | Type : coffee shop", "name : Zizzi | food : French | area : riverside | near : X"]


@pytest.mark.parametrize("model_name", ["tiny-gpt2", "tiny-llama"])
def test_infix_is_tokens_between_table_and_separator(model_name):
    """§7.3: with the activations that words w get in context (after the table x, at positions X..X+2) as the
    infix, the training logits equal those of the token sequence [x; w; sep y] (positions continue after the
    infix; rows of different lengths in one padded batch), and beam-2 decoding equals decoding the prompt
    x + w + [sep] without any prefix."""
    model, tok = build_tiny(model_name), load_tokenizer("tiny-gpt2")
    eos = tok.eos_token_id
    w = _ids(1, 3, seed=4)[0].tolist()
    rows = [encode_example(tok, t, "It is a nice place .")[0] for t in TABLES]
    seps = [r.index(eos, 1) for r in rows]
    infixes = [activations_of(model, torch.tensor([r[:s] + w]))[..., s:, :] for r, s in zip(rows, seps)]
    T = max(map(len, rows))
    ids = torch.tensor([r + [eos] * (T - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows])
    for i, (r, s) in enumerate(zip(rows, seps)):
        got = infix_logits(model, infixes[i], ids, mask, eos)[i]  # (T, V) in the layout of ids
        full = model(input_ids=torch.tensor([r[:s] + w + r[s:]])).logits[0, s + 3 :]
        assert (got[s : len(r)] - full).abs().max() <= 1e-4
        assert (model(input_ids=torch.tensor([r])).logits[0, s:] - full).abs().max() > 1e-3  # the infix matters
    cfg = DecodeConfig(beam_size=2, max_new_tokens=6, min_new_tokens=1, ban_newlines=False, precision="fp32")
    texts = decode(model, tok, TABLES, infixes, cfg, prefix_index=[0, 1], position="infix")
    prompts = [p[:-1] + w + p[-1:] for p in (encode_prompt(tok, t) for t in TABLES)]
    ref = search(model, prompts, None, SearchSettings.from_config(cfg, eos_id=eos), pad_id=eos)
    assert texts == [ids_to_text(tok, g) for g in ref]


def test_infix_step_touches_only_the_infix_and_reloads(tmp_path):
    cfg = load_config(
        None,
        [
            "model.name=tiny-gpt2",
            f"out_dir={tmp_path}",
            "method.position=infix",
            "method.prefix_length=2",
            "method.mlp_hidden=8",
        ],
    )
    model, tok = build_tiny("tiny-gpt2"), load_tokenizer("tiny-gpt2")
    base = {k: v.clone() for k, v in model.state_dict().items()}
    method = build_method(cfg.method, model, tok, seed=1)
    ids = torch.tensor([encode_example(tok, TABLES[0], "A place .")[0]])
    opt = torch.optim.AdamW(method.trainable(), lr=1e-2)
    method.train_mode(False)
    logits = method.forward(ids, torch.ones_like(ids))
    torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).backward()
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is not None for p in method.trainable())
    opt.step()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in base.items())
    method.eval_mode()
    save_config(cfg, RunDir(tmp_path).config)
    assert save_artifact(RunDir(tmp_path), method, cfg).name == "infix.safetensors"
    run = load_run(tmp_path)
    with torch.no_grad():
        assert torch.equal(
            infix_logits(run.model, run.prefix, ids, torch.ones_like(ids), tok.eos_token_id),
            method.forward(ids, torch.ones_like(ids)),
        )
