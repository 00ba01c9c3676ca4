"""Continuous batching: generation requests, each with its own prefix (or none), share the decoding steps of one
frozen model. Prefixes of different tasks can share a batch because the model itself is unchanged (paper §4);
here they also join and leave a running batch between steps. Pure: token ids in, token ids out (HTTP lives in
`prefix_tuning.serve`).

Cache layout: one DynamicCache whose layers hold every running row (B rows, S columns):
    keys/values (B, KV, S, D) per layer, attention mask (B, S), next position (B,), next-token logits (B, V).
Row i is `[masked pad | prefix_i (P_i) | masked pad | prompt_i (T_i) | generated]`, right-aligned, so one (B, 1)
forward decodes every row. Prompt tokens take positions P_i .. P_i+T_i-1 and generated token n takes
P_i+T_i+n: the positions the row gets when decoded alone by `prefix_tuning.decode.decode`. Masked columns get
zero attention weight, so in fp32 a request's tokens do not depend on what shares the batch (tested).

Join: requests waiting when a step starts are prefilled together (prompts and prefixes left-padded to the
longest, as decode does), then concatenated to the running rows, the shorter side left-padded with masked zero
columns. Leave: a row that ends (EOS, max_new_tokens, its stop test, cancel) is dropped with an index select
before the next forward, then columns masked in every remaining row are cut from the left, so S is the longest
live row, not the longest the batch has seen.

Token choice is decode's greedy: log_softmax of fp32 logits, banned ids -inf, EOS -inf before min_new_tokens,
argmax (the EOS itself is not returned). temperature > 0 samples from softmax(logp / temperature) within the
top_p nucleus with the request's own torch.Generator, so a seeded sample does not depend on the batch either.
Layers must all be full attention (GPT-2, Llama/SmolLM2): sliding-window layers would not survive the trim.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """More waiting requests than the engine takes (HTTP 429)."""


class EngineClosed(RuntimeError):
    """The engine is shutting down and takes no new requests (HTTP 503)."""


@dataclass(eq=False)
class Request:
    """One generation. Callbacks run on the engine thread: keep them short (the server posts to its loop)."""

    prompt: list[int]
    prefix: Tensor | None = None  # (L, 2, KV, P, D) or None
    max_new_tokens: int = 100
    min_new_tokens: int = 5
    banned_ids: tuple[int, ...] = ()
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: Callable[[list[int]], bool] | None = None  # called with the tokens so far after each new token
    on_token: Callable[[int], None] | None = None
    on_done: Callable[[str], None] | None = None  # reason: eos, length, stop, cancelled, error
    tokens: list[int] = field(default_factory=list)  # generated, without EOS
    finish: str | None = None
    cancelled: bool = False
    generator: torch.Generator | None = None


def _lpad(x: Tensor, width: int, dim: int) -> Tensor:
    """Left-pad `x` with zeros along `dim` to `width` (zeros are masked columns)."""
    n = width - x.shape[dim]
    if n <= 0:
        return x
    shape = list(x.shape)
    shape[dim] = n
    return torch.cat([x.new_zeros(shape), x], dim=dim)


@functools.cache
def _takes_logits_to_keep(cls: type) -> bool:
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def sample(logp: Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    """One token from softmax(logp / temperature) restricted to the smallest set with mass >= top_p. logp: (V,)

    The nucleus is found in the top 256 tokens when it lies there (a full sort of the vocabulary is ~50x slower),
    else by a full sort; the draw is argmax(p / E), E ~ Exp(1) (an exponential race, distributed as
    multinomial(p))."""
    probs = torch.softmax(logp / temperature, dim=-1)
    if top_p < 1.0:
        p, idx = probs.topk(min(256, probs.numel()))  # best first
        if float(p.sum()) < top_p:
            p, idx = probs.sort(descending=True)
        keep = (p.cumsum(0) - p) < top_p  # the most likely token is always kept
        probs = torch.zeros_like(probs).scatter_(0, idx[keep], p[keep])
    race = torch.empty_like(probs).exponential_(generator=generator)
    return int((probs / race).argmax())


class Engine:
    """Runs requests in a continuous batch; `start()` for a background thread, or call `step()` yourself.

    max_batch: rows decoded together; max_waiting: requests queued beyond that (more -> QueueFull).
    mix_prefixes=False admits only requests with the prefix the batch already runs (a one-prefix-at-a-time
    server, for comparison in benchmarks/serve.py). step_sleep: seconds to sleep after each step (tests use it
    to stand in for a slower model)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        eos_id: int,
        pad_id: int | None = None,
        max_batch: int = 64,
        max_waiting: int = 256,
        mix_prefixes: bool = True,
        step_sleep: float = 0.0,
    ):
        types = set(getattr(model.config, "layer_types", None) or ["full_attention"])
        if types != {"full_attention"}:
            raise ValueError(f"continuous batching needs full-attention layers only, the model has {sorted(types)}")
        param = next(model.parameters())
        self.model, self.device, self.dtype = model, param.device, param.dtype
        self.eos_id, self.pad_id = eos_id, eos_id if pad_id is None else pad_id
        self.max_batch, self.max_waiting = max_batch, max_waiting
        self.mix_prefixes, self.step_sleep = mix_prefixes, step_sleep
        self.waiting: deque[Request] = deque()
        self.rows: list[Request] = []
        self.cache = None  # DynamicCache: per layer keys/values (B, KV, S, D)
        self.mask: Tensor | None = None  # (B, S)
        self.pos: Tensor | None = None  # (B,) position of each row's next token
        self.logits: Tensor | None = None  # (B, V) fp32, next-token logits
        self._bans: dict[tuple[int, ...], Tensor] = {}  # banned ids -> (1, nb) index tensor on the device
        self.stats = {"steps": 0, "tokens": 0, "finished": 0, "cancelled": 0, "errors": 0, "peak_rows": 0}
        self.cond = threading.Condition()
        self.accepting = True
        self._thread: threading.Thread | None = None
        self._stop = False

    # ------------------------------------------------------------------------------------ queue

    def submit(self, *reqs: Request) -> None:
        """Queue requests (all or none); they join the batch at the start of the next step."""
        for r in reqs:
            if not r.prompt:
                raise ValueError("every prompt needs at least one token")
            if r.max_new_tokens < 1 or not 0 <= r.min_new_tokens <= r.max_new_tokens:
                raise ValueError(
                    f"impossible lengths: max_new_tokens={r.max_new_tokens}, min_new_tokens={r.min_new_tokens}"
                )
        with self.cond:
            if not self.accepting:
                raise EngineClosed("the server is shutting down")
            if len(self.waiting) + len(reqs) > self.max_waiting:
                raise QueueFull(f"{len(self.waiting)} requests waiting, limit {self.max_waiting}; retry later")
            for r in reqs:
                if r.temperature > 0:
                    r.generator = torch.Generator(device=self.device)
                    r.generator.manual_seed(r.seed) if r.seed is not None else r.generator.seed()
                self.waiting.append(r)
            self.cond.notify_all()

    def cancel(self, req: Request) -> None:
        """Ask a request to leave; its row goes at the start of the next step (on_done('cancelled'))."""
        req.cancelled = True
        with self.cond:
            self.cond.notify_all()

    def counts(self) -> dict:
        return dict(running=len(self.rows), waiting=len(self.waiting), **self.stats)

    def _finish(self, r: Request, reason: str) -> None:
        r.finish = reason
        self.stats[{"cancelled": "cancelled", "error": "errors"}.get(reason, "finished")] += 1
        if r.on_done is not None:
            try:
                r.on_done(reason)
            except Exception:  # a broken listener must not stop the engine
                log.exception("on_done callback failed")

    def _admit(self) -> tuple[list[Request], list[Request]]:
        """(joiners, cancelled waiting requests), oldest first; without mixing, only the running prefix joins."""
        with self.cond:
            joiners, gone, keep = [], [], deque()
            running = self.rows[0].prefix if self.rows else None
            for r in self.waiting:
                if r.cancelled:
                    gone.append(r)
                elif len(self.rows) + len(joiners) >= self.max_batch:
                    keep.append(r)
                elif (
                    self.mix_prefixes
                    or (not self.rows and not joiners)
                    or r.prefix is (running if self.rows else joiners[0].prefix)
                ):
                    joiners.append(r)
                else:
                    keep.append(r)
            self.waiting = keep
            return joiners, gone

    # ------------------------------------------------------------------------------------ model

    def _forward(self, input_ids: Tensor, mask: Tensor, pos: Tensor, cache) -> Tensor:
        """fp32 logits (B, V) of the last position (an index tensor, not a strided view: see beam._forward)."""
        T = input_ids.shape[1]
        kw = {}
        if _takes_logits_to_keep(type(self.model)):
            kw["logits_to_keep"] = torch.tensor([T - 1], device=self.device) if T > 1 else 1
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True, **kw)
        return out.logits[:, -1, :].float()

    def _prefill(self, reqs: list[Request]):
        """Cache (k, KV, Pm+T, D) per layer, mask (k, Pm+T), next positions (k,), logits (k, V) of new rows."""
        from transformers import DynamicCache

        B, T = len(reqs), max(len(r.prompt) for r in reqs)
        lens = [0 if r.prefix is None else r.prefix.shape[-2] for r in reqs]
        Pm = max(lens)
        ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        mask = torch.zeros(B, Pm + T, dtype=torch.long)
        pos = torch.zeros(B, T, dtype=torch.long)
        for i, (r, P) in enumerate(zip(reqs, lens)):
            n = len(r.prompt)
            ids[i, T - n :] = torch.tensor(r.prompt, dtype=torch.long)
            mask[i, Pm - P : Pm] = 1
            mask[i, Pm + T - n :] = 1
            pos[i, :] = P
            pos[i, T - n :] = P + torch.arange(n)
        cache = DynamicCache()
        if Pm:
            L, _, KV, _, D = next(r.prefix for r in reqs if r.prefix is not None).shape
            kv = torch.zeros(B, L, 2, KV, Pm, D, dtype=self.dtype, device=self.device)  # (B, L, 2, KV, Pm, D)
            for i, (r, P) in enumerate(zip(reqs, lens)):
                if P:
                    kv[i, ..., Pm - P :, :] = r.prefix.to(device=self.device, dtype=self.dtype)
            for layer in range(L):
                cache.update(kv[:, layer, 0], kv[:, layer, 1], layer)  # (B, KV, Pm, D) each
        mask, pos = mask.to(self.device), pos.to(self.device)
        logits = self._forward(ids.to(self.device), mask, pos, cache)
        next_pos = torch.tensor([P + len(r.prompt) for r, P in zip(reqs, lens)], device=self.device)
        return cache, mask, next_pos, logits

    def _join(self, reqs: list[Request], cache, mask: Tensor, pos: Tensor, logits: Tensor) -> None:
        if not self.rows:
            self.rows, self.cache, self.mask, self.pos, self.logits = list(reqs), cache, mask, pos, logits
            return
        W = max(self.mask.shape[1], mask.shape[1])
        for old, new in zip(self.cache.layers, cache.layers):
            old.keys = torch.cat([_lpad(old.keys, W, 2), _lpad(new.keys, W, 2)], dim=0)  # (B+k, KV, W, D)
            old.values = torch.cat([_lpad(old.values, W, 2), _lpad(new.values, W, 2)], dim=0)
        self.mask = torch.cat([_lpad(self.mask, W, 1), _lpad(mask, W, 1)], dim=0)  # (B+k, W)
        self.pos = torch.cat([self.pos, pos])
        self.logits = torch.cat([self.logits, logits])
        self.rows += reqs

    def _keep(self, idx: list[int]) -> None:
        """Keep only rows `idx` (in order), then cut columns that no remaining row attends to."""
        if not idx:
            self.rows, self.cache, self.mask, self.pos, self.logits = [], None, None, None, None
            return
        if len(idx) == len(self.rows):
            return
        sel = torch.tensor(idx, device=self.device)
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[sel], layer.values[sel]
        self.rows = [self.rows[i] for i in idx]
        self.mask, self.pos, self.logits = self.mask[sel], self.pos[sel], self.logits[sel]
        first = int(self.mask.any(0).int().argmax())  # first column some row attends to
        if first:
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
            self.mask = self.mask[:, first:]

    def _choose(self) -> list[int]:
        logp = torch.log_softmax(self.logits, dim=-1)  # (B, V)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, r in enumerate(self.rows):
            if r.banned_ids:
                groups.setdefault(r.banned_ids, []).append(i)
        for ban, idx in groups.items():
            if ban not in self._bans:
                self._bans[ban] = torch.tensor(ban, device=self.device)[None, :]
            logp[torch.tensor(idx, device=self.device)[:, None], self._bans[ban]] = float("-inf")
        early = [i for i, r in enumerate(self.rows) if len(r.tokens) < r.min_new_tokens]
        if early:
            logp[early, self.eos_id] = float("-inf")
        tok = logp.argmax(dim=-1).tolist()  # (B,)
        for i, r in enumerate(self.rows):
            if r.temperature > 0:
                tok[i] = sample(logp[i], r.temperature, r.top_p, r.generator)
        return tok

    # ------------------------------------------------------------------------------------ steps

    @torch.inference_mode()
    def step(self) -> bool:
        """Admit waiting requests, choose one token for every row, drop finished rows, run the next forward.
        Returns False when there was nothing to do."""
        joiners, gone = self._admit()
        for r in gone:
            self._finish(r, "cancelled")
        left = [i for i, r in enumerate(self.rows) if not r.cancelled]
        for r in self.rows:
            if r.cancelled:
                self._finish(r, "cancelled")
        self._keep(left)
        if joiners:
            try:
                self._join(joiners, *self._prefill(joiners))
            except Exception:
                log.exception("prefill failed")
                for r in joiners:
                    self._finish(r, "error")
        if not self.rows:
            return bool(gone or joiners)
        self.stats["peak_rows"] = max(self.stats["peak_rows"], len(self.rows))
        try:
            self._decode_step()
        except Exception:
            log.exception("decoding step failed; the batch is dropped")
            rows = self.rows
            self._keep([])
            for r in rows:
                self._finish(r, "error")
        self.stats["steps"] += 1
        return True

    def _decode_step(self) -> None:
        tok, keep = self._choose(), []
        for i, (r, t) in enumerate(zip(self.rows, tok)):
            if t == self.eos_id:
                self._finish(r, "eos")
                continue
            r.tokens.append(t)
            self.stats["tokens"] += 1
            if r.on_token is not None:
                try:
                    r.on_token(t)
                except Exception:
                    log.exception("on_token callback failed")
            if len(r.tokens) >= r.max_new_tokens:
                self._finish(r, "length")
            elif r.stop is not None and r.stop(r.tokens):
                self._finish(r, "stop")
            else:
                keep.append(i)
        self._keep(keep)
        if not self.rows:
            return
        ids = torch.tensor([tok[i] for i in keep], device=self.device)[:, None]  # (B, 1)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(keep), 1)], dim=1)  # (B, S+1)
        self.logits = self._forward(ids, self.mask, self.pos[:, None], self.cache)
        self.pos = self.pos + 1

    def run_until_done(self) -> None:
        """Step until nothing runs or waits (callers that do not use the thread)."""
        while self.rows or self.waiting:
            self.step()

    def generate(self, reqs: list[Request]) -> list[list[int]]:
        """Submit and run to the end on this thread (no background thread running); tokens per request."""
        self.submit(*reqs)
        self.run_until_done()
        return [r.tokens for r in reqs]

    # ------------------------------------------------------------------------------------ thread

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="prefix-tuning-engine", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.waiting and not self.rows and not self._stop:
                    self.cond.wait(0.5)
                if self._stop and not self.waiting and not self.rows:
                    return
            try:
                self.step()
            except Exception:  # step() already fails the rows it cannot run; never let the thread die
                log.exception("engine step failed")
                time.sleep(0.1)
            if self.step_sleep:
                time.sleep(self.step_sleep)

    def shutdown(self, drain_s: float = 0.0) -> None:
        """Stop taking requests, let running and waiting ones finish for up to drain_s seconds, cancel the rest."""
        with self.cond:
            self.accepting = False
        deadline = time.monotonic() + drain_s
        while (self.rows or self.waiting) and time.monotonic() < deadline and self._thread is not None:
            time.sleep(0.02)
        with self.cond:
            for r in list(self.waiting) + list(self.rows):
                r.cancelled = True
            self._stop = True
            self.cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
        else:
            self.run_until_done()
