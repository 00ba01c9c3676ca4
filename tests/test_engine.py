"""Continuous batching engine: a request's tokens equal `decode.decode` (greedy, fp32) and the same request run
alone, whatever shares the batch: prefixes of different lengths P, no prefix, staggered arrivals, rows that end
at different steps (EOS made likely, as in test_decode), cancels, a one-prefix-at-a-time mode."""

from __future__ import annotations

import pytest
import torch
from tiny import EOS, eos_model

from prefix_tuning.config import DecodeConfig
from prefix_tuning.data import encode_prompt, group_by_mr, load_e2e
from prefix_tuning.decode import decode, ids_to_text, newline_token_ids
from prefix_tuning.engine import Engine, QueueFull, Request
from prefix_tuning.models import KVShape, load_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")
MAX, MIN = 16, 3


@pytest.fixture(scope="module")
def tok(data_dir):
    return load_tokenizer("tiny-gpt2", data_dir)


@pytest.fixture(scope="module")
def tables(data_dir):
    return [g.table for g in group_by_mr(load_e2e("test", data_dir=data_dir))[:10]]


_setups: dict = {}


def make_setup(name: str, tok, tables):
    """model, prefixes (P = 1, 3, 5, 8 and None), and decode()'s text for table k with prefix k % 5."""
    if name in _setups:
        return _setups[name]
    model = eos_model(name)
    s = KVShape.from_config(model.config)
    prefixes = [
        torch.randn(s.n_layers, 2, s.n_kv_heads, P, s.head_dim, generator=torch.Generator().manual_seed(P))
        for P in (1, 3, 5, 8)
    ] + [None]
    cfg = DecodeConfig(beam_size=1, max_new_tokens=MAX, min_new_tokens=MIN, precision="fp32")
    ref = [decode(model, tok, [t], prefixes[k % 5], cfg)[0] for k, t in enumerate(tables)]
    _setups[name] = model, prefixes, ref
    return _setups[name]


@pytest.fixture(scope="module")
def setup(tok, tables):
    return make_setup("tiny-gpt2", tok, tables)


def requests(tok, tables, prefixes, **kw) -> list[Request]:
    return [
        Request(encode_prompt(tok, t), prefixes[k % 5], MAX, MIN, newline_token_ids(tok), **kw)
        for k, t in enumerate(tables)
    ]


def run_staggered(engine: Engine, reqs: list[Request], arrive: list[int], check=None) -> int:
    """Submit request i at step arrive[i]; step until all are done. Returns the number of steps."""
    pending, step = sorted(zip(arrive, range(len(reqs)))), 0
    while pending or engine.rows or engine.waiting:
        now = [reqs[i] for a, i in pending if a <= step]
        pending = [(a, i) for a, i in pending if a > step]
        if now:
            engine.submit(*now)
        engine.step()
        if check is not None:
            check(engine)
        step += 1
        assert step < 500
    return step


def invariants(engine: Engine) -> None:
    """One tensor per layer for all rows; no leading column that every row masks (trimmed on leave)."""
    if engine.rows:
        B, S = engine.mask.shape
        assert B == len(engine.rows) and bool(engine.mask[:, 0].any())
        assert all(layer.keys.shape[0] == B and layer.keys.shape[2] == S for layer in engine.cache.layers)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])  # Llama: grouped-query attention, rotary positions
def test_mixed_prefixes_staggered_equal_decode_and_alone(name, tok, tables):
    model, prefixes, ref = make_setup(name, tok, tables)
    engine = Engine(model, eos_id=EOS)
    reqs = requests(tok, tables, prefixes)
    run_staggered(engine, reqs, [0, 0, 1, 3, 3, 4, 7, 9, 12, 20], check=invariants)
    texts = [ids_to_text(tok, r.tokens) for r in reqs]
    assert texts == ref
    assert {r.finish for r in reqs} == {"eos", "length"}  # rows left at different steps
    assert engine.stats["peak_rows"] >= 4 and not engine.rows and engine.cache is None
    alone = [Engine(model, eos_id=EOS).generate([r])[0] for r in requests(tok, tables, prefixes)]
    assert alone == [r.tokens for r in reqs]


def test_one_prefix_at_a_time_same_outputs(setup, tok, tables):
    model, prefixes, _ = setup
    engine = Engine(model, eos_id=EOS, mix_prefixes=False)

    def one_prefix(e):
        assert len({id(r.prefix) for r in e.rows}) <= 1

    reqs = requests(tok, tables, prefixes)
    run_staggered(engine, reqs, [0] * len(reqs), check=one_prefix)
    mixed = Engine(model, eos_id=EOS).generate(requests(tok, tables, prefixes))
    assert [r.tokens for r in reqs] == mixed


def test_seeded_sampling_does_not_depend_on_the_batch(setup, tok, tables):
    model, prefixes, _ = setup
    tables = tables[:5]
    kw = {"temperature": 0.9, "top_p": 0.8, "seed": 11}
    mixed = requests(tok, tables, prefixes, **kw)
    run_staggered(Engine(model, eos_id=EOS), mixed, [0, 0, 2, 3, 6])
    alone = [Engine(model, eos_id=EOS).generate([r])[0] for r in requests(tok, tables, prefixes, **kw)]
    assert alone == [r.tokens for r in mixed]
    other = Engine(model, eos_id=EOS).generate(requests(tok, tables[:1], prefixes, temperature=0.9, top_p=0.8, seed=12))
    assert other[0] != alone[0]


def test_cancel_stop_and_queue_limit(setup, tok, tables):
    model, prefixes, ref = setup
    engine = Engine(model, eos_id=EOS, max_batch=3, max_waiting=4)
    reqs = requests(tok, tables[:8], prefixes)
    reqs[0].min_new_tokens = MAX  # runs to the end unless cancelled
    reqs[1].stop = lambda ids: len(ids) >= 2
    done = []
    reqs[2].on_done = done.append
    engine.submit(*reqs[:4])
    with pytest.raises(QueueFull):
        engine.submit(reqs[4])  # 4 waiting already
    engine.step()
    assert len(engine.rows) == 3 and len(engine.waiting) == 1  # max_batch
    with pytest.raises(QueueFull):
        engine.submit(*reqs[4:8])  # 1 waiting + 4 > 4: all or none
    engine.submit(reqs[4])
    engine.cancel(reqs[0])
    engine.cancel(reqs[4])  # still waiting
    engine.run_until_done()
    assert reqs[0].finish == reqs[4].finish == "cancelled" and len(reqs[0].tokens) == 1
    assert reqs[1].finish == "stop" and len(reqs[1].tokens) == 2
    assert done == [reqs[2].finish] and ids_to_text(tok, reqs[2].tokens) == ref[2]
    assert ids_to_text(tok, reqs[3].tokens) == ref[3]
    assert engine.counts()["cancelled"] == 2 and engine.counts()["running"] == 0
