"""The OpenAI completions request and response for `prefix_tuning.serve`: validation with the reason for every
400/404, prompt wrapping, stop strings, finish reasons, response and stream-chunk JSON. No HTTP here.

Text is decode's: the generated ids (no EOS) decoded with special tokens skipped, line breaks turned into
spaces, stripped, so a greedy completion equals `prefix_tuning.decode.decode`'s text for the same table.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import Callable
from types import SimpleNamespace

from torch import Tensor

from .config import DecodeConfig
from .data import encode_prompt, linearize_mr
from .decode import decode, ids_to_text, newline_token_ids

MAX_N = 16  # choices per prompt, and beam width for best_of
UNSUPPORTED = ("suffix", "logit_bias", "echo")


class ApiError(Exception):
    """An error answered as `{"error": {"message", "type", "param", "code"}}` with an HTTP status."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None, type: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")


def error_body(e: ApiError) -> dict:
    return {"error": {"message": e.message, "type": e.type, "param": e.param, "code": e.code}}


@dataclasses.dataclass
class Completion:
    """A validated completions request: token-id prompts (wrapped as training did) and generation settings."""

    model: str
    prefix: Tensor | None
    prompts: list[list[int]]
    tables: list[str] | None  # linearised tables for best_of (beam via decode); None for raw / token prompts
    n: int = 1
    best_of: int = 1
    max_tokens: int = 100
    min_tokens: int = 5
    ban_newlines: bool = True
    banned_ids: tuple[int, ...] = ()
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    id: str = dataclasses.field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex[:24]}")
    created: int = dataclasses.field(default_factory=lambda: int(time.time()))

    def choices(self) -> list[tuple[list[int], int]]:
        """(prompt ids, prompt number) per choice; choice index = prompt number * n + j, as OpenAI counts."""
        return [(p, k) for k, p in enumerate(self.prompts) for _ in range(self.n)]

    def cut_stop(self, text: str) -> tuple[str, bool]:
        """The text before the earliest stop string, and whether one was found."""
        at = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        return (text[:at], True) if at >= 0 else (text, False)

    def stop_test(self, tokenizer) -> Callable[[list[int]], bool] | None:
        if not self.stop:
            return None
        return lambda ids: any(s in ids_to_text(tokenizer, ids) for s in self.stop)

    def final_text(self, tokenizer, ids: list[int]) -> tuple[str, bool]:
        return self.cut_stop(ids_to_text(tokenizer, ids))

    @staticmethod
    def reason(finish: str, cut: bool) -> str:
        """OpenAI's finish_reason: EOS and stop strings are `stop`, max_tokens is `length`."""
        if cut or finish in ("eos", "stop"):
            return "stop"
        return finish  # length, cancelled (shutdown)

    def usage(self, reqs) -> dict:
        p = sum(len(r.prompt) for r in reqs[:: self.n])
        c = sum(len(r.tokens) for r in reqs)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def response(self, choices: list[dict], reqs) -> dict:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": self.usage(reqs),
        }

    def chunk(self, choices: list[dict], usage: dict | None = None) -> str:
        body = {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"


class StreamText:
    """Streamed pieces of one choice whose concatenation is exactly the non-streamed text: a piece is sent only
    once the text so far is stable (not ending in a partial UTF-8 character, not possibly the start of a stop
    string); the rest comes with the finish."""

    def __init__(self, job: Completion, tokenizer):
        self.job, self.tok, self.ids, self.sent = job, tokenizer, [], ""
        self.hold = max((len(s) for s in job.stop), default=1) - 1

    def add(self, token: int) -> str:
        self.ids.append(token)
        text, cut = self.job.final_text(self.tok, self.ids)
        if not cut:
            if text.endswith("\ufffd"):
                return ""
            text = text[: len(text) - self.hold]
        return self._delta(text)

    def finish(self, ids: list[int]) -> tuple[str, bool]:
        text, cut = self.job.final_text(self.tok, ids)
        return self._delta(text), cut

    def _delta(self, text: str) -> str:
        if not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent) :], text
        return delta


# ------------------------------------------------------------------------------------------------ parsing


def _int(body: dict, key: str, default: int | None, lo: int, hi: int) -> int | None:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ApiError(400, f"'{key}' must be an integer in [{lo}, {hi}], got {v!r}", key)
    return v


def _num(body: dict, key: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo < v if lo_open else lo <= v) or v > hi:
        raise ApiError(400, f"'{key}' must be a number in {'(' if lo_open else '['}{lo}, {hi}], got {v!r}", key)
    return float(v)


def _bool(body: dict, key: str, default: bool) -> bool:
    v = body.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise ApiError(400, f"'{key}' must be true or false, got {v!r}", key)
    return v


def _prompts(body: dict, state, mr: bool, raw: bool) -> tuple[list[list[int]], list[str] | None]:
    """Token ids per prompt and (for string prompts without raw) the linearised tables."""

    p = body.get("prompt")
    if isinstance(p, str):
        p = [p]
    if not isinstance(p, list) or not p:
        raise ApiError(400, "'prompt' must be a string, a list of strings, token ids or lists of token ids", "prompt")
    if all(isinstance(x, str) for x in p):
        if raw:
            ids = [state.tokenizer(x)["input_ids"] for x in p]
            if not all(ids):
                raise ApiError(400, 'an empty prompt with "raw": true has no tokens', "prompt")
            return ids, None
        tables = []
        for k, x in enumerate(p):
            try:
                tables.append(linearize_mr(x, where=f"prompt {k}") if mr else x)
            except ValueError as e:
                raise ApiError(400, f'not an E2E MR ("mr": true): {e}', "prompt") from None
        return [encode_prompt(state.tokenizer, t) for t in tables], tables
    if all(isinstance(x, int) and not isinstance(x, bool) for x in p):
        p = [p]
    vocab = len(state.tokenizer)
    if not all(isinstance(x, list) and x and all(isinstance(t, int) and 0 <= t < vocab for t in x) for x in p):
        raise ApiError(400, f"token-id prompts must be non-empty lists of ids in [0, {vocab})", "prompt")
    return p, None


def parse_completion(body: dict, state) -> Completion:
    """Validate a /v1/completions body against the server's model, prefixes and limits (ApiError otherwise)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required: the base model or a prefix name", "model")
    if model != state.model_id and model not in state.prefixes:
        known = [state.model_id] + sorted(state.prefixes)
        raise ApiError(404, f"model '{model}' not found; known: {known}", "model", "model_not_found")
    prefix = state.prefixes.get(model)
    for key in UNSUPPORTED:
        if body.get(key):
            raise ApiError(400, f"'{key}' is not supported by this server", key)
    if body.get("logprobs") is not None:
        raise ApiError(400, "'logprobs' is not supported by this server", "logprobs")
    for key in ("presence_penalty", "frequency_penalty"):
        if body.get(key):
            raise ApiError(400, f"'{key}' is not supported by this server (send 0 or leave it out)", key)
    mr, raw = _bool(body, "mr", False), _bool(body, "raw", False)
    if mr and raw:
        raise ApiError(400, '"mr" and "raw" exclude each other', "raw")
    n = _int(body, "n", 1, 1, MAX_N)
    best_of = _int(body, "best_of", 1, 1, MAX_N)
    max_tokens = _int(body, "max_tokens", state.max_tokens, 1, state.max_context)
    min_tokens = _int(body, "min_tokens", min(state.min_tokens, max_tokens), 0, max_tokens)
    temperature = _num(body, "temperature", 0.0, 0.0, 2.0)
    top_p = _num(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
    seed = _int(body, "seed", None, -(2**63), 2**63 - 1)
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else (stop or [])
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(400, "'stop' must be a non-empty string or a list of up to 4 of them", "stop")
    stream = _bool(body, "stream", False)
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise ApiError(400, "'stream_options' must be an object", "stream_options")
    prompts, tables = _prompts(body, state, mr, raw)
    P = 0 if prefix is None else int(prefix.shape[-2])
    for k, ids in enumerate(prompts):
        if P + len(ids) >= state.max_context:
            raise ApiError(
                400,
                f"prompt {k} too long: {len(ids)} tokens + prefix of {P} leave no room in the "
                f"model's {state.max_context} positions",
                "prompt",
                "context_length_exceeded",
            )
        if P + len(ids) + max_tokens > state.max_context:
            raise ApiError(
                400,
                f"'max_tokens' {max_tokens} too large: prompt {k} ({len(ids)} tokens) + prefix of "
                f"{P} + max_tokens exceed the model's {state.max_context} positions; at most "
                f"{state.max_context - P - len(ids)}",
                "max_tokens",
                "context_length_exceeded",
            )
    if best_of > 1:
        if n != 1 or temperature != 0 or stream:
            raise ApiError(
                400, "best_of > 1 is beam search here: it needs n = 1, temperature 0 and no stream", "best_of"
            )
        if tables is None:
            raise ApiError(400, 'best_of > 1 (beam search) takes string prompts without "raw"', "best_of")
    ban = _bool(body, "ban_newlines", True)
    eos = state.engine.eos_id  # data.eos_id_of, looked up once when the server loaded
    banned = tuple(sorted(set(newline_token_ids(state.tokenizer)) - {eos})) if ban else ()
    return Completion(
        model,
        prefix,
        prompts,
        tables,
        n,
        best_of,
        max_tokens,
        min_tokens,
        ban,
        banned,
        temperature,
        top_p,
        seed,
        tuple(stop),
        stream,
        _bool(opts, "include_usage", False),
    )


async def beam_completion(state, job: Completion) -> dict:
    """best_of > 1: the paper's beam search via `decode.decode`, outside the continuous batch, one at a time."""

    if state.beam_waiting >= state.engine.max_waiting:
        raise ApiError(
            429, "too many beam requests waiting; retry later", None, "rate_limit_exceeded", "rate_limit_error"
        )
    cfg = DecodeConfig(
        beam_size=job.best_of,
        max_new_tokens=job.max_tokens,
        min_new_tokens=job.min_tokens,
        ban_newlines=job.ban_newlines,
        precision=state.precision,
        batch_size=len(job.tables),
    )

    def run() -> list[str]:
        with state.beam_lock:
            return decode(state.model, state.tokenizer, job.tables, job.prefix, cfg)

    state.beam_waiting += 1
    try:
        texts = await asyncio.to_thread(run)
    finally:
        state.beam_waiting -= 1
    choices, ids = [], []
    for i, t in enumerate(texts):
        text, cut = job.cut_stop(t)
        ids.append(state.tokenizer(t, add_special_tokens=False)["input_ids"])
        reason = "stop" if cut or len(ids[-1]) < job.max_tokens else "length"
        choices.append({"index": i, "text": text, "logprobs": None, "finish_reason": reason})
    reqs = [SimpleNamespace(prompt=p, tokens=g) for (p, _), g in zip(job.choices(), ids)]  # for usage
    return job.response(choices, reqs)
