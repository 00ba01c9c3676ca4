"""Decoding: our batched greedy / beam search against simple references and HF generate.

Models: the tiny GPT-2 and Llama (grouped-query attention) of `build_tiny`, with the LM head scaled 3x (so
logits are far from ties) and a random EOS row of the head (so hypotheses end at different lengths and
the finished-hypothesis logic is exercised; the tiny models' own EOS never wins, and Llama's is all zero
because EOS is also its padding id).

The references below are deliberately naive: one table at a time, no batching, no padding, and every step
re-runs the whole sequence (prompt + generated tokens) through the model with a FRESH cache holding only
the prefix, at positions P..P+T-1. They share no code with `prefix_tuning.beam`.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from tiny import EOS, eos_model, random_prefix
from torch import nn

from prefix_tuning.beam import SearchSettings, left_pad, search
from prefix_tuning.cli import main
from prefix_tuning.config import DecodeConfig, MethodConfig, ModelConfig, RunConfig
from prefix_tuning.configfile import save_config
from prefix_tuning.data import encode_prompt, group_by_mr, load_e2e
from prefix_tuning.decode import decode, newline_token_ids, search_settings
from prefix_tuning.generate import generate_run
from prefix_tuning.models import build_tiny, load_tokenizer
from prefix_tuning.prefix import build_cache, prefix_inputs, save_prefix

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def tok(data_dir):
    return load_tokenizer("tiny-gpt2", data_dir)


@pytest.fixture(scope="module")
def groups(data_dir):
    return group_by_mr(load_e2e("test", data_dir=data_dir))


@pytest.fixture(scope="module")
def tables(groups):
    # real E2E test MRs of different lengths (3 to 8 slots)
    picked = sorted(groups[:60], key=lambda g: len(g.table))
    return [g.table for g in picked[::8]]


@pytest.fixture(scope="module", params=["tiny-gpt2", "tiny-llama"])
def model(request):
    return eos_model(request.param)


# ------------------------------------------------------------------------------------ the references


def ref_logprobs(model, prompt: list[int], seqs: list[list[int]], prefix) -> torch.Tensor:
    """Next-token log-probs after prompt + seq, for equally long seqs: full re-run, fresh prefix cache."""
    ids = torch.tensor([prompt + s for s in seqs])
    B, T = ids.shape
    with torch.no_grad():
        if prefix is None:
            logits = model(input_ids=ids).logits
        else:
            P = prefix.shape[-2]
            logits = model(
                input_ids=ids,
                cache=build_cache(prefix, B),
                attention_mask=torch.ones(B, P + T),
                position_ids=torch.arange(P, P + T).expand(B, T),
                use_cache=True,
            ).logits
    return torch.log_softmax(logits[:, -1].float(), dim=-1)


def ref_ban(logp: torch.Tensor, seq: list[int], s: SearchSettings) -> torch.Tensor:
    logp = logp.clone()
    for t in s.banned_ids:
        logp[t] = float("-inf")
    if len(seq) < s.min_new_tokens:
        logp[s.eos_id] = float("-inf")
    n = s.no_repeat_ngram_size
    if n:
        for i in range(len(seq) - n + 1):
            if seq[i : i + n - 1] == seq[len(seq) - n + 1 :]:
                logp[seq[i + n - 1]] = float("-inf")
    return logp


def ref_greedy(model, prompt, prefix, s: SearchSettings) -> list[int]:
    seq: list[int] = []
    for _ in range(s.max_new_tokens):
        t = int(ref_ban(ref_logprobs(model, prompt, [seq], prefix)[0], seq, s).argmax())
        if t == s.eos_id:
            break
        seq.append(t)
    return seq


def ref_beam(model, prompt, prefix, s: SearchSettings) -> list[int]:
    """Textbook beam search with HF's rules (see prefix_tuning.beam's docstring), one table, no cache."""
    K, lp = s.beam_size, s.length_penalty
    running = [([], torch.tensor(0.0))]  # (tokens, summed log-prob), best first
    finished: list[tuple[float, list[int]]] = []
    for n in range(s.max_new_tokens):
        logps = ref_logprobs(model, prompt, [seq for seq, _ in running], prefix)
        cands = []
        for (seq, score), logp in zip(running, logps):
            total = score + ref_ban(logp, seq, s)
            top = total.topk(2 * K)
            cands += [(float(v), seq + [int(t)], v) for v, t in zip(top.values, top.indices)]
        cands = sorted(cands, key=lambda c: -c[0])[: 2 * K]
        last = n + 1 == s.max_new_tokens
        running_next = []
        for rank, (_, seq, v) in enumerate(cands):
            if seq[-1] == s.eos_id or last:
                if rank < K:  # only the first K candidates may finish
                    finished.append((float(v / (n + 1) ** lp), seq[:-1] if seq[-1] == s.eos_id else seq))
            elif len(running_next) < K:
                running_next.append((seq, v))
        finished = sorted(finished, key=lambda f: -f[0])[:K]
        if last:
            break
        running = running_next
        if len(finished) == K:
            length = s.max_new_tokens if s.early_stopping == "never" and lp > 0 else n + 1
            if s.early_stopping is True or not float(running[0][1] / length**lp) > finished[-1][0]:
                break
    return finished[0][1]


def settings(banned_ids=(198, 628), **kw) -> SearchSettings:
    cfg = dataclasses.replace(DecodeConfig(beam_size=3, max_new_tokens=20, min_new_tokens=2), **kw)
    return SearchSettings.from_config(cfg, eos_id=EOS, banned_ids=banned_ids)


def prompts_of(tok, tables):
    return [encode_prompt(tok, t) for t in tables]


# ------------------------------------------------------------------------------------------------ tests


def test_prefill_positions_and_mask():
    pre5, pre3 = torch.zeros(1, 2, 1, 5, 2), torch.zeros(1, 2, 1, 3, 2)
    ids, mask = left_pad([[1, 2, 3], [4]], 0, torch.device("cpu"))
    kw = prefix_inputs([pre5, pre3], ids, mask)
    assert kw["input_ids"].tolist() == [[1, 2, 3], [0, 0, 4]]
    assert kw["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 0, 0, 1]]
    assert kw["position_ids"].tolist() == [[5, 6, 7], [3, 3, 3]]  # pads take the first real position
    assert kw["cache"].layers[0].keys.shape == (2, 1, 5, 2)  # the shorter prefix left-padded to 5


def test_greedy_matches_reference(model, tok, tables):
    prefix = random_prefix(model)
    s = settings(beam_size=1)
    prompts = prompts_of(tok, tables)
    got = search(model, prompts, [prefix] * len(prompts), s, pad_id=EOS)
    assert got == [ref_greedy(model, p, prefix, s) for p in prompts]
    assert len({len(g) for g in got}) > 1  # hypotheses of different lengths: EOS does end them
    got_plain = search(model, prompts[:3], None, s, pad_id=EOS)
    assert got_plain == [ref_greedy(model, p, None, s) for p in prompts[:3]]


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(length_penalty=0.6, beam_size=4),
        dict(early_stopping=True),
        dict(early_stopping="never", length_penalty=1.5),
    ],
)
def test_beam_matches_reference(model, tok, tables, kw):
    prefix = random_prefix(model)
    s = settings(**kw)
    prompts = prompts_of(tok, tables)[:4]
    got = search(model, prompts, [prefix] * len(prompts), s, pad_id=EOS)
    assert got == [ref_beam(model, p, prefix, s) for p in prompts]


def test_beam_size_one_equals_greedy(model, tok, tables):
    prefix = random_prefix(model)
    prompts = prompts_of(tok, tables)
    for lp in (1.0, 0.5):
        s = settings(beam_size=1, length_penalty=lp)
        beam = search(model, prompts, [prefix] * len(prompts), s, pad_id=EOS, algorithm="beam")
        assert beam == search(model, prompts, [prefix] * len(prompts), s, pad_id=EOS, algorithm="greedy")


@pytest.mark.parametrize("early_stopping", [False, True, "never"])
def test_matches_hf_generate(model, tok, tables, early_stopping):
    """HF generate with a user cache of batch x beams rows and the attention mask over prefix + prompt."""
    K, P = 4, 5
    prefix = random_prefix(model, P)
    s = settings(beam_size=K, early_stopping=early_stopping, max_new_tokens=16)
    prompts = prompts_of(tok, tables)
    got = search(model, prompts, [prefix] * len(prompts), s, pad_id=EOS)
    B, T = len(prompts), max(map(len, prompts))
    ids = torch.full((B, T), EOS)
    mask = torch.zeros(B, P + T, dtype=torch.long)
    mask[:, :P] = 1
    for i, p in enumerate(prompts):
        ids[i, T - len(p) :] = torch.tensor(p)
        mask[i, P + T - len(p) :] = 1
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        cache=build_cache(prefix, B * K),
        num_beams=K,
        do_sample=False,
        max_new_tokens=s.max_new_tokens,
        min_new_tokens=s.min_new_tokens,
        length_penalty=s.length_penalty,
        early_stopping=early_stopping,
        bad_words_ids=[[t] for t in s.banned_ids],
        eos_token_id=EOS,
        pad_token_id=EOS,
    )
    hf = [row[: row.index(EOS)] if EOS in row else row for row in out[:, T:].tolist()]
    assert got == hf


def test_independent_of_batch_size_and_padding(model, tok, tables):
    prefix = random_prefix(model)
    cfgs = [
        DecodeConfig(beam_size=3, max_new_tokens=15, min_new_tokens=2, batch_size=b, precision="fp32")
        for b in (1, 3, 16)
    ]
    outs = [decode(model, tok, tables, prefix, c) for c in cfgs]
    assert outs[0] == outs[1] == outs[2]
    # the same table padded next to a much longer one, or alone
    long = tables[-1] + " | near : " + "The Sorrento " * 6
    assert decode(model, tok, [tables[0], long], prefix, cfgs[2])[0] == outs[0][0]


def test_mixed_prefixes_equal_each_alone(model, tok, tables):
    """Paper §4: rows of one batch use different prefixes (here of lengths 5, 3 and none) over one model."""
    pa, pb = random_prefix(model, 5, seed=1), random_prefix(model, 3, seed=2)
    cfg = DecodeConfig(beam_size=3, max_new_tokens=15, min_new_tokens=2, precision="fp32")
    n = len(tables)
    index = [i % 3 for i in range(n)]
    mixed = decode(model, tok, tables, [pa, pb, None], cfg, prefix_index=index)
    alone = {
        0: decode(model, tok, tables, pa, cfg),
        1: decode(model, tok, tables, pb, cfg),
        2: decode(model, tok, tables, None, cfg),
    }
    assert mixed == [alone[index[i]][i] for i in range(n)]
    # a (N, L, 2, KV, P, D) stack works too
    stack = torch.stack([pa, random_prefix(model, 5, seed=3)])
    assert decode(model, tok, tables[:3], stack, cfg, prefix_index=[0, 0, 0]) == alone[0][:3]


def test_prefix_changes_output(model, tok, tables):
    """A decoder that dropped the prefix (or gave it wrong positions) would fail the reference tests; here
    the prefix visibly matters, so those tests can tell."""
    cfg = DecodeConfig(beam_size=3, max_new_tokens=15, min_new_tokens=2, precision="fp32")
    with_prefix = decode(model, tok, tables, random_prefix(model), cfg)
    without = decode(model, tok, tables, None, cfg)
    assert sum(a != b for a, b in zip(with_prefix, without)) >= len(tables) - 1


def test_min_new_tokens_and_banned_ids(model, tok, tables):
    prefix = random_prefix(model)
    prompts = prompts_of(tok, tables)
    free = search(model, prompts, [prefix] * len(prompts), settings(min_new_tokens=0), pad_id=EOS)
    short = min(len(g) for g in free)
    s = settings(min_new_tokens=short + 3)
    got = search(model, prompts, [prefix] * len(prompts), s, pad_id=EOS)
    assert min(len(g) for g in got) >= short + 3
    assert got == [ref_beam(model, p, prefix, s) for p in prompts[: len(got)]]
    used = sorted({t for g in free for t in g})[:40]
    banned = search(
        model, prompts, [prefix] * len(prompts), settings(min_new_tokens=0, banned_ids=tuple(used)), pad_id=EOS
    )
    assert not {t for g in banned for t in g} & set(used)


def test_no_repeat_ngram(model, tok, tables):
    prefix = random_prefix(model)
    prompts = prompts_of(tok, tables)[:4]
    for size in (1, 2, 3):
        s = settings(no_repeat_ngram_size=size)
        got = search(model, prompts, [prefix] * len(prompts), s, pad_id=EOS)
        for g in got:
            grams = [tuple(g[i : i + size]) for i in range(len(g) - size + 1)]
            assert len(grams) == len(set(grams))
        if size == 2:
            assert got == [ref_beam(model, p, prefix, s) for p in prompts]


def test_newlines_banned_and_text(tok):
    ids = newline_token_ids(tok)
    assert {198, 628} <= set(ids) and EOS not in ids
    assert all(len(f"x{tok.decode([i])}x".splitlines()) > 1 for i in ids)  # each holds a line break
    s = search_settings(DecodeConfig(), tok)
    assert (s.beam_size, s.max_new_tokens, s.min_new_tokens, s.length_penalty) == (5, 100, 5, 1.0)
    assert set(ids) <= set(s.banned_ids) and s.eos_id == EOS and s.early_stopping is False
    assert search_settings(DecodeConfig(ban_newlines=False), tok).banned_ids == ()
    with pytest.raises(ValueError, match="early_stopping"):
        search_settings(DecodeConfig(early_stopping="sometimes"), tok)


def test_bf16_and_errors(tok, tables):
    model = eos_model("tiny-gpt2")
    prefix = random_prefix(model)
    out = decode(model, tok, tables[:3], prefix, DecodeConfig(beam_size=2, max_new_tokens=8, precision="bf16"))
    assert len(out) == 3 and all(isinstance(t, str) and "\n" not in t for t in out)
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is untouched
    llama_prefix = random_prefix(eos_model("tiny-llama"))
    with pytest.raises(ValueError, match="KV heads"):
        decode(model, tok, tables[:2], llama_prefix, DecodeConfig(max_new_tokens=4))
    with pytest.raises(ValueError, match="prefix_index"):
        decode(model, tok, tables[:2], [prefix, prefix], DecodeConfig(max_new_tokens=4))
    with pytest.raises(ValueError, match="prefix_index"):
        decode(model, tok, tables[:2], [prefix, prefix], DecodeConfig(max_new_tokens=4), prefix_index=[0])


# --------------------------------------------------------------------------------------- run level


def make_run(path, *, prefix_seed: int | None, prefix_length: int = 5, model_weights: nn.Module | None = None):
    method = (
        MethodConfig(name="prefix", prefix_length=prefix_length)
        if prefix_seed is not None
        else MethodConfig(name="finetune")
    )
    cfg = RunConfig(
        model=ModelConfig(name="tiny-gpt2"),
        method=method,
        out_dir=str(path),
        decode=DecodeConfig(beam_size=2, max_new_tokens=12, min_new_tokens=2, precision="fp32"),
    )
    path.mkdir(parents=True)
    save_config(cfg, path / "config.yaml")
    if prefix_seed is not None:
        save_prefix(
            random_prefix(build_tiny("tiny-gpt2"), prefix_length, prefix_seed),
            path / "prefix.safetensors",
            base_model="tiny-gpt2",
        )
    else:
        from safetensors.torch import save_model

        save_model(model_weights, str(path / "model.safetensors"))
    return path


def test_generate_run_end_to_end(tmp_path, groups, tok):
    rd = make_run(tmp_path / "p5", prefix_seed=1)
    out = generate_run(rd, "test", limit=4, metrics=["BLEU", "NIST"]).outputs
    assert out == rd / "outputs-test.txt"
    hyps = out.read_text().split("\n")
    assert hyps[-1] == "" and len(hyps) == 5  # 4 lines, each ending in a newline
    refs = (rd / "refs-test.txt").read_text()
    assert refs == "\n\n".join("\n".join(g.refs) for g in groups[:4]) + "\n"
    res = json.loads((rd / "scores-test.json").read_text())  # their values: test_generate_run_scores_are_official
    assert {"BLEU", "NIST", "signature"} <= set(res) and res["n_mrs"] == 4 and res["split"] == "test"
    # the same texts through the Python API
    from prefix_tuning.prefix import load_prefix

    p, _ = load_prefix(rd / "prefix.safetensors")
    cfg = DecodeConfig(beam_size=2, max_new_tokens=12, min_new_tokens=2, precision="fp32")
    assert decode(build_tiny("tiny-gpt2"), tok, [g.table for g in groups[:4]], p, cfg) == hyps[:4]


def test_generate_run_scores_are_official(tmp_path, monkeypatch, data_dir):
    """scores-dev.json holds the official E2E scorer's BLEU and NIST of the outputs written against the right refs.

    Decoding is replaced by the official example system output for the first 10 dev MRs (shared/data/e2e-eval),
    whose scores `measure_scores.py` printed (golden numbers, independent of this package's metrics code)."""
    import prefix_tuning.generate as gen

    eval_dir = data_dir / "e2e-eval"
    lines = (eval_dir / "example-baseline-output.txt").read_text(encoding="utf-8").splitlines()
    by_table = {g.table: h for g, h in zip(group_by_mr(load_e2e("dev", data_dir=data_dir))[:10], lines)}
    assert len(by_table) == 10
    monkeypatch.setattr(gen, "decode", lambda model, tokenizer, tables, *a, **k: [by_table[t] for t in tables])
    rd = make_run(tmp_path / "p5", prefix_seed=1)
    out = generate_run(rd, "dev", limit=10, metrics=["BLEU", "NIST"]).outputs
    assert out.read_text(encoding="utf-8").splitlines() == lines
    official_refs = (eval_dir / "example-devel-refs.txt").read_text(encoding="utf-8")
    assert (rd / "refs-dev.txt").read_text(encoding="utf-8").strip() == official_refs.strip()
    res = json.loads((rd / "scores-dev.json").read_text())
    assert res["n_mrs"] == 10
    assert res["BLEU"] == pytest.approx(0.7202928494, abs=1e-9)  # official scorer, shared/data/e2e-eval/README.md
    assert res["NIST"] == pytest.approx(7.8211519275, abs=1e-9)


def test_generate_cli_mixed_runs(tmp_path, capsys):
    """Several run dirs (prefix lengths 5 and 3, and a fine-tuned model) in one command; the two prefix runs
    share batches and give what each gives alone."""
    ft = build_tiny("tiny-gpt2", seed=99)
    runs = [
        make_run(tmp_path / "a", prefix_seed=1),
        make_run(tmp_path / "b", prefix_seed=2, prefix_length=3),
        make_run(tmp_path / "ft", prefix_seed=None, model_weights=ft),
    ]
    mrs = tmp_path / "mrs.txt"
    mrs.write_text("name[The Eagle], eatType[coffee shop], food[French]\n\nname[Zizzi], area[riverside]\n")
    args = ["generate", *map(str, runs), "--mrs", str(mrs), "--greedy", "--max-new-tokens", "6", "--quiet"]
    assert main(args) == 0
    together = [(r / "outputs-mrs.txt").read_text() for r in runs]
    assert all(len(t.splitlines()) == 2 for t in together)
    for r, text in zip(runs, together):
        (r / "outputs-mrs.txt").unlink()
        assert main(["generate", str(r), "--mrs", str(mrs), "--greedy", "--max-new-tokens", "6", "--quiet"]) == 0
        assert (r / "outputs-mrs.txt").read_text() == text
    assert together[0] != together[1] and not (runs[0] / "scores-mrs.json").exists()
    assert main(["generate", str(runs[0]), str(runs[1]), "--out", str(tmp_path / "x.txt"), "--limit", "1"]) == 2
