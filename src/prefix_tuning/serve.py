"""OpenAI-compatible completions server: one frozen base model, many prefixes, continuous batching across them
(`prefix_tuning.engine`; paper §4: rows of different prefixes share a batch because the model is shared).

    prefix-tuning serve --model tiny-gpt2 --prefixes runs/ [--host 127.0.0.1 --port 8000]

--model: a model name (hub id, local folder, alias) or a run dir (its base model; a prefix run adds its prefix,
a fine-tuning run's model.safetensors is loaded). --prefixes: run dirs, folders of run dirs, or
`prefix.safetensors` files; a prefix is named after its run dir.

Endpoints (errors use OpenAI's shape `{"error": {"message", "type", "param", "code"}}`):
- `GET /health`: `{"status": "ok", "running", "waiting", ...}` (engine counters).
- `GET /v1/models`: the base model and every prefix (`prefix_length` P, `path`).
- `POST /v1/prefixes {"name": "p10", "path": "runs/p10", "replace": false}`: load a prefix while running (path:
  run dir or .safetensors file on the server; name defaults to the run dir's name). 201; 409 if the name is
  taken (unless replace); 400 if unreadable or made for another model. `DELETE /v1/prefixes/{name}`: 200.
  Anyone who can reach the server can make it read such files: it listens on 127.0.0.1 unless --host says
  otherwise, and --no-prefix-updates turns both endpoints off (403).
- `POST /v1/completions`: `model` = a prefix name or the base model (no prefix); unknown -> 404 listing both.
  `prompt`: a string, a list of strings, token ids or lists of token ids. A string is a linearised table
  (`name : The Eagle | Type : pub`), wrapped as training did (`data.encode_prompt`: ' {table} ' + EOS).
  Extensions: `"mr": true` the strings are raw E2E MRs (`name[The Eagle], eatType[pub]`), linearised first;
  `"raw": true` strings are tokenised as they are (no separator); token ids are always used as they are.
  `max_tokens` (default --max-tokens, 100 as decode), `min_tokens` (extension: EOS banned before; default
  min(--min-tokens, max_tokens)), `ban_newlines` (extension, default true as decode), `temperature` (default 0 =
  greedy, unlike OpenAI's 1), `top_p`, `seed`, `n`, `stop` (up to 4 strings; cut from the text), `stream` (SSE
  chunks in OpenAI's format, then `data: [DONE]`; `stream_options.include_usage`). Greedy output equals
  `prefix_tuning.decode.decode(..., DecodeConfig(beam_size=1, ...))` in fp32 whatever shares the batch.
  `best_of` > 1 (extension meaning): beam search of that width, the paper's decoding (best_of=5), run by
  `prefix_tuning.decode.decode` OUTSIDE the continuous batch, one beam request at a time; temperature 0,
  n = 1, string prompts, no streaming. Bad fields -> 400; too many waiting requests -> 429.
SIGTERM: stop accepting, let running requests finish for --drain-seconds, cancel the rest, exit.
The model, its prefixes and the engine are loaded by `serve_state.load_state`; `cli` adds the `serve` command.
"""

import asyncio
import json
import logging
import socket
from contextlib import asynccontextmanager
from pathlib import Path

from .engine import EngineClosed, QueueFull, Request
from .serve_api import ApiError, Completion, beam_completion, error_body, parse_completion
from .serve_state import ServerState, prefix_name

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ app


def _err(e: ApiError):
    from fastapi.responses import JSONResponse

    return JSONResponse(error_body(e), status_code=e.status)


def create_app(state: ServerState):
    """The FastAPI app; its lifespan starts the engine thread and drains it on shutdown."""
    from fastapi import FastAPI
    from fastapi import Request as HttpRequest  # a real annotation (no __future__ here): FastAPI reads it
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    @asynccontextmanager
    async def lifespan(app):
        if state.engine._thread is None:
            state.engine.start()
        yield
        left = state.engine.counts()["running"] + state.engine.counts()["waiting"]
        await asyncio.to_thread(state.engine.shutdown, 0.0)  # uvicorn already waited --drain-seconds
        print(f"prefix-tuning serve: stopped ({left} requests cancelled)", flush=True)

    app = FastAPI(title="prefix-tuning", lifespan=lifespan)
    app.state.server = state

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        return _err(ApiError(exc.status_code, str(exc.detail)))

    @app.get("/health")
    async def health():
        return {
            "status": "ok" if state.engine.accepting else "shutting down",
            "model": state.model_id,
            "prefixes": len(state.prefixes),
            **state.engine.counts(),
        }

    @app.get("/v1/models")
    async def models():
        base = [
            {
                "id": state.model_id,
                "object": "model",
                "created": state.created,
                "owned_by": "prefix-tuning",
                "prefix_length": None,
            }
        ]
        return {
            "object": "list",
            "data": base
            + [
                {
                    "id": n,
                    "object": "model",
                    "created": state.created,
                    "owned_by": "prefix-tuning",
                    "prefix_length": int(p.shape[-2]),
                    "path": state.paths[n],
                    "root": state.model_id,
                }
                for n, p in state.prefixes.items()
            ],
        }

    @app.post("/v1/prefixes")
    async def add_prefix(request: HttpRequest):
        try:
            if not state.prefix_updates:
                raise ApiError(403, "prefix updates are off (--no-prefix-updates)", None, "forbidden")
            body = await _json(request)
            path, name = body.get("path"), body.get("name")
            if not isinstance(path, str) or not path:
                raise ApiError(400, "'path' (a run dir or prefix.safetensors file on the server) is required", "path")
            name = name or prefix_name(Path(path))
            if not isinstance(name, str):
                raise ApiError(400, "'name' must be a string", "name")
            p = await asyncio.to_thread(state.add_prefix, name, path, body.get("replace") is True)
        except ApiError as e:
            return _err(e)
        return JSONResponse(
            {"id": name, "object": "model", "prefix_length": int(p.shape[-2]), "path": state.paths[name]},
            status_code=201,
        )

    @app.delete("/v1/prefixes/{name}")
    async def delete_prefix(name: str):
        if not state.prefix_updates:
            return _err(ApiError(403, "prefix updates are off (--no-prefix-updates)", None, "forbidden"))
        if name not in state.prefixes:
            return _err(ApiError(404, f"no prefix named '{name}'; known: {sorted(state.prefixes)}", "name"))
        del state.prefixes[name], state.paths[name]  # running requests keep their own reference
        return {"id": name, "object": "model", "deleted": True}

    @app.post("/v1/completions")
    async def completions(request: HttpRequest):
        try:
            job = parse_completion(await _json(request), state)
            if job.best_of > 1:
                return await beam_completion(state, job)
            reqs, queue = _engine_requests(state, job, asyncio.get_running_loop())
            try:
                state.engine.submit(*reqs)
            except QueueFull as e:
                raise ApiError(429, str(e), None, "rate_limit_exceeded", "rate_limit_error") from None
            except EngineClosed as e:
                raise ApiError(503, str(e), None, "shutting_down", "server_error") from None
        except ApiError as e:
            return _err(e)
        if job.stream:
            return StreamingResponse(
                _stream(state, job, reqs, queue), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        return await _wait(state, job, reqs, queue, request)

    return app


async def _json(request) -> dict:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"malformed JSON body: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the JSON body must be an object")
    return body


def _post(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, item: tuple) -> None:
    try:
        loop.call_soon_threadsafe(queue.put_nowait, item)
    except RuntimeError:  # the loop is closed: nobody listens any more
        pass


def _engine_requests(state: ServerState, job: Completion, loop) -> tuple[list[Request], asyncio.Queue]:
    """One engine Request per (prompt, choice); events (choice, token, finish) go to one asyncio queue."""
    queue: asyncio.Queue = asyncio.Queue()
    reqs = []
    for i, (prompt, _) in enumerate(job.choices()):
        on_token = (lambda t, i=i: _post(loop, queue, (i, t, None))) if job.stream else None
        reqs.append(
            Request(
                prompt,
                job.prefix,
                job.max_tokens,
                job.min_tokens,
                job.banned_ids,
                job.temperature,
                job.top_p,
                None if job.seed is None else job.seed + i % job.n,
                stop=job.stop_test(state.tokenizer),
                on_token=on_token,
                on_done=lambda reason, i=i: _post(loop, queue, (i, None, reason)),
            )
        )
    return reqs, queue


async def _wait(state, job: Completion, reqs: list[Request], queue: asyncio.Queue, request):
    """Non-streaming: wait for every choice; a client that goes away cancels its requests."""
    pending = len(reqs)
    try:
        while pending:
            try:
                _, _, reason = await asyncio.wait_for(queue.get(), timeout=1.0)
            except TimeoutError:
                if await request.is_disconnected():
                    return _err(ApiError(499, "client disconnected"))
                continue
            pending -= reason is not None
    finally:
        for r in reqs:
            if r.finish is None:
                state.engine.cancel(r)
    if any(r.finish == "error" for r in reqs):
        return _err(ApiError(500, "generation failed (see the server log)", None, "internal", "server_error"))
    choices = []
    for i, r in enumerate(reqs):
        text, cut = job.final_text(state.tokenizer, r.tokens)
        choices.append({"index": i, "text": text, "logprobs": None, "finish_reason": job.reason(r.finish, cut)})
    return job.response(choices, reqs)


async def _stream(state, job: Completion, reqs: list[Request], queue: asyncio.Queue):
    """Server-sent events: a chunk per new piece of text of a choice, its finish, usage if asked, [DONE]."""
    from .serve_api import StreamText

    texts = [StreamText(job, state.tokenizer) for _ in reqs]
    pending = len(reqs)
    try:
        while pending:
            i, tok, reason = await queue.get()
            if reason is None:
                delta = texts[i].add(tok)
                if delta:
                    yield job.chunk([{"index": i, "text": delta, "logprobs": None, "finish_reason": None}])
                continue
            pending -= 1
            if reason == "error":
                yield f"data: {json.dumps(error_body(ApiError(500, 'generation failed', code='internal')))}\n\n"
                continue
            delta, cut = texts[i].finish(reqs[i].tokens)
            yield job.chunk([{"index": i, "text": delta, "logprobs": None, "finish_reason": job.reason(reason, cut)}])
        if job.include_usage:
            yield job.chunk([], usage=job.usage(reqs))
        yield "data: [DONE]\n\n"
    finally:  # also reached when the client disconnects (the generator is cancelled or closed)
        for r in reqs:
            if r.finish is None:
                state.engine.cancel(r)


def serve(
    state: ServerState,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    log_level: str = "info",
    sock: socket.socket | None = None,
) -> None:
    """Run until SIGTERM/SIGINT (uvicorn waits --drain-seconds for running requests, then they are cancelled)."""
    import uvicorn

    if sock is None:
        sock = socket.create_server((host, port))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(state), log_level=log_level, timeout_graceful_shutdown=state.drain_s)
    print(
        f"prefix-tuning serve: {state.model_id} + {len(state.prefixes)} prefixes on http://{host}:{port}/v1", flush=True
    )
    uvicorn.Server(config).run(sockets=[sock])
