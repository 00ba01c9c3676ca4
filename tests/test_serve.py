"""The HTTP server, on 127.0.0.1 only (a free port), with tiny-gpt2 and random prefixes saved as run dirs: the
official `openai` client round trip, concurrent mixed-prefix requests == the same request alone == decode(),
streaming == non-streaming, every bad request -> its documented status (and the next good one still works),
queue limit, client disconnect, prefixes added and removed while running, graceful shutdown, the CLI."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from prefix_tuning.cli import add_serve_parser, cmd_serve
from prefix_tuning.config import DecodeConfig, MethodConfig, ModelConfig, RunConfig
from prefix_tuning.configfile import save_config
from prefix_tuning.data import group_by_mr, linearize_mr, load_e2e
from prefix_tuning.decode import decode
from prefix_tuning.models import KVShape, build_tiny
from prefix_tuning.prefix import save_prefix
from prefix_tuning.serve import create_app
from prefix_tuning.serve_state import load_state

REPO = Path(__file__).resolve().parents[1]
LENGTHS = {"p2": 2, "p5": 5, "p9": 9}
pytestmark = pytest.mark.usefixtures("one_thread")


def make_runs(root: Path, names: dict[str, int], seed: int = 0) -> Path:
    s = KVShape.from_config(build_tiny("tiny-gpt2").config)
    for k, (name, P) in enumerate(names.items()):
        (root / name).mkdir(parents=True)
        g = torch.Generator().manual_seed(seed + k)
        save_prefix(
            torch.randn(s.n_layers, 2, s.n_kv_heads, P, s.head_dim, generator=g) * 2,
            root / name / "prefix.safetensors",
            base_model="tiny-gpt2",
        )
    return root


class Server:
    """uvicorn in a thread on 127.0.0.1, any free port."""

    def __init__(self, state):
        import uvicorn

        self.state = state
        sock = socket.create_server(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(create_app(state), log_level="warning", timeout_graceful_shutdown=state.drain_s)
        )
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def srv(tmp_path_factory, data_dir):
    runs = make_runs(tmp_path_factory.mktemp("runs"), LENGTHS)
    state = load_state(
        "tiny-gpt2", [str(runs)], device="cpu", precision="fp32", threads=1, max_tokens=20, min_tokens=2, drain_s=10
    )
    server = Server(state)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tables(data_dir):
    return [g.table for g in group_by_mr(load_e2e("test", data_dir=data_dir))[:8]]


@pytest.fixture(scope="module")
def client(srv):
    return openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0, timeout=60)


def reference(srv, table: str, model: str, max_tokens: int = 20, min_tokens: int = 2, beam: int = 1) -> str:
    prefix = srv.state.prefixes.get(model)
    cfg = DecodeConfig(beam_size=beam, max_new_tokens=max_tokens, min_new_tokens=min_tokens, precision="fp32")
    return decode(srv.state.model, srv.state.tokenizer, [table], prefix, cfg)[0]


def post(srv, body, path: str = "/v1/completions") -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(srv.url + path, content=content, timeout=60)


def sse(srv, body) -> list[dict | str]:
    events = []
    with httpx.stream("POST", srv.url + "/v1/completions", json={**body, "stream": True}, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                data = line[len("data: ") :]
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


# ------------------------------------------------------------------------------------------------ tests


def test_openai_client_round_trip(srv, client, tables):
    ids = [m.id for m in client.models.list().data]
    assert ids == ["tiny-gpt2", "p2", "p5", "p9"]
    r = client.completions.create(model="p5", prompt=tables[0], max_tokens=12, temperature=0)
    assert r.object == "text_completion" and r.model == "p5" and len(r.choices) == 1
    assert r.choices[0].text == reference(srv, tables[0], "p5", 12)
    assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens <= 12
    stream = client.completions.create(model="p5", prompt=tables[0], max_tokens=12, stream=True)
    assert "".join(c.choices[0].text for c in stream) == r.choices[0].text
    base = client.completions.create(model="tiny-gpt2", prompt=[tables[1], tables[2]], max_tokens=8)
    assert [c.text for c in base.choices] == [reference(srv, t, "tiny-gpt2", 8) for t in tables[1:3]]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")


def test_concurrent_mixed_prefixes_equal_alone_and_decode(srv, tables):
    names = ["p2", "p5", "p9", "tiny-gpt2"]
    jobs = [{"model": names[k % 4], "prompt": t, "max_tokens": 10 + 2 * k} for k, t in enumerate(tables)]
    alone = [post(srv, j).json()["choices"][0]["text"] for j in jobs]  # one at a time
    engine = srv.state.engine
    engine.stats["peak_rows"], engine.step_sleep = 0, 0.003  # a slower model, so requests overlap

    def staggered(k):
        time.sleep(0.01 * k)
        return post(srv, jobs[k]).json()["choices"][0]["text"]

    try:
        with ThreadPoolExecutor(len(jobs)) as pool:
            mixed = list(pool.map(staggered, range(len(jobs))))
    finally:
        engine.step_sleep = 0.0
    assert engine.stats["peak_rows"] >= 3  # requests of different prefixes shared steps
    assert mixed == alone
    assert alone == [reference(srv, j["prompt"], j["model"], j["max_tokens"]) for j in jobs]


def test_streaming_equals_non_streaming(srv, tables):
    body = {
        "model": "p9",
        "prompt": tables[:2],
        "max_tokens": 16,
        "n": 2,
        "temperature": 0.8,
        "seed": 5,
        "stream_options": {"include_usage": True},
    }
    full = post(srv, body).json()
    events = sse(srv, body)
    assert events[-1] == "[DONE]" and events[-2]["usage"] == full["usage"]
    texts, reasons = [""] * 4, [None] * 4
    for e in events[:-2]:
        assert e["object"] == "text_completion" and e["id"].startswith("cmpl-")
        for c in e["choices"]:
            texts[c["index"]] += c["text"]
            reasons[c["index"]] = c["finish_reason"] or reasons[c["index"]]
    assert texts == [c["text"] for c in full["choices"]]
    assert reasons == [c["finish_reason"] for c in full["choices"]]
    assert texts[0] == texts[2] != texts[1]  # n choices: seed + j; the same seed gives the same sample
    # stop strings are cut the same way in both (a word of the greedy text, found first)
    text = post(srv, {"model": "p2", "prompt": tables[3], "max_tokens": 20}).json()["choices"][0]["text"]
    stop = text.split()[3]
    body = {"model": "p2", "prompt": tables[3], "max_tokens": 20, "stop": [stop]}
    cut = post(srv, body).json()["choices"][0]
    assert cut["text"] == text[: text.index(stop)] and cut["finish_reason"] == "stop"
    assert "".join(c["text"] for e in sse(srv, body)[:-1] for c in e["choices"]) == cut["text"]


def test_mr_prompts_and_beam(srv, tables, data_dir):
    group = group_by_mr(load_e2e("test", data_dir=data_dir))[0]
    as_mr = post(srv, {"model": "p5", "prompt": group.mr, "mr": True, "max_tokens": 10}).json()
    as_table = post(srv, {"model": "p5", "prompt": linearize_mr(group.mr), "max_tokens": 10}).json()
    assert as_mr["choices"][0]["text"] == as_table["choices"][0]["text"]
    beam = post(srv, {"model": "p5", "prompt": tables[0], "max_tokens": 10, "best_of": 3}).json()
    assert beam["choices"][0]["text"] == reference(srv, tables[0], "p5", 10, beam=3)
    raw = post(srv, {"model": "p5", "prompt": "The Eagle is", "raw": True, "max_tokens": 5}).json()
    ids = post(srv, {"model": "p5", "prompt": srv.state.tokenizer("The Eagle is")["input_ids"], "max_tokens": 5})
    assert raw["choices"][0]["text"] == ids.json()["choices"][0]["text"] and raw["usage"]["prompt_tokens"] == 3


BAD = [  # (body, status, param)
    (b"{not json", 400, None),
    ([1, 2], 400, None),
    ({"prompt": "x"}, 400, "model"),
    ({"model": "nope", "prompt": "x"}, 404, "model"),
    ({"model": "p2"}, 400, "prompt"),
    ({"model": "p2", "prompt": []}, 400, "prompt"),
    ({"model": "p2", "prompt": [[1, 2], [99999999]]}, 400, "prompt"),
    ({"model": "p2", "prompt": "word " * 300}, 400, "prompt"),
    ({"model": "p2", "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "p2", "prompt": "x", "max_tokens": 254}, 400, "max_tokens"),
    ({"model": "p2", "prompt": "x", "max_tokens": "ten"}, 400, "max_tokens"),
    ({"model": "p2", "prompt": "x", "min_tokens": 30}, 400, "min_tokens"),
    ({"model": "p2", "prompt": "x", "temperature": 3}, 400, "temperature"),
    ({"model": "p2", "prompt": "x", "top_p": 0}, 400, "top_p"),
    ({"model": "p2", "prompt": "x", "n": 0}, 400, "n"),
    ({"model": "p2", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"model": "p2", "prompt": "x", "stream": "yes"}, 400, "stream"),
    ({"model": "p2", "prompt": "x", "mr": True, "raw": True}, 400, "raw"),
    ({"model": "p2", "prompt": "not an MR", "mr": True}, 400, "prompt"),
    ({"model": "p2", "prompt": "x", "best_of": 2, "stream": True}, 400, "best_of"),
    ({"model": "p2", "prompt": [1, 2], "best_of": 2}, 400, "best_of"),
    ({"model": "p2", "prompt": "x", "logprobs": 2}, 400, "logprobs"),
    ({"model": "p2", "prompt": "x", "echo": True}, 400, "echo"),
]


@pytest.mark.parametrize("body,status,param", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_request_then_good(srv, tables, body, status, param):
    r = post(srv, body)
    err = r.json()["error"]
    assert r.status_code == status and err["param"] == param and err["message"] and err["type"]
    if status == 404:
        assert "p2" in err["message"] and "tiny-gpt2" in err["message"]
    good = post(srv, {"model": "p2", "prompt": tables[0], "max_tokens": 4})
    assert good.status_code == 200 and good.json()["choices"][0]["text"]


def test_other_routes_errors(srv):
    assert httpx.get(srv.url + "/nope").json()["error"]["message"] == "Not Found"
    assert httpx.get(srv.url + "/v1/completions").status_code == 405
    assert post(srv, {"path": "/no/such/run"}, "/v1/prefixes").status_code == 400
    assert post(srv, {"name": "p2", "path": srv.state.paths["p5"]}, "/v1/prefixes").status_code == 409
    srv.state.prefix_updates = False
    try:
        assert post(srv, {"path": srv.state.paths["p5"], "name": "x"}, "/v1/prefixes").status_code == 403
        assert httpx.delete(srv.url + "/v1/prefixes/p2").status_code == 403
    finally:
        srv.state.prefix_updates = True
    h = httpx.get(srv.url + "/health").json()
    assert h["status"] == "ok" and h["prefixes"] == 3 and h["running"] == 0


def test_add_and_remove_prefix_while_running(srv, tables, tmp_path):
    make_runs(tmp_path, {"new": 4}, seed=100)
    r = post(srv, {"name": "added", "path": str(tmp_path / "new")}, "/v1/prefixes")
    assert r.status_code == 201 and r.json()["prefix_length"] == 4
    assert "added" in [m["id"] for m in httpx.get(srv.url + "/v1/models").json()["data"]]
    got = post(srv, {"model": "added", "prompt": tables[0], "max_tokens": 8}).json()["choices"][0]["text"]
    assert got == reference(srv, tables[0], "added", 8)
    assert httpx.delete(srv.url + "/v1/prefixes/added").status_code == 200
    assert post(srv, {"model": "added", "prompt": "x"}).status_code == 404


def long_stream_body(tokens: int = 200) -> dict:
    return {"model": "p2", "prompt": "x", "max_tokens": tokens, "min_tokens": tokens, "stream": True}


def test_queue_limit_429_and_disconnect_frees_slot(srv, tables):
    engine = srv.state.engine
    before = engine.counts()["cancelled"]
    engine.max_batch, engine.max_waiting, engine.step_sleep = 1, 1, 0.02
    try:
        with httpx.stream("POST", srv.url + "/v1/completions", json=long_stream_body(), timeout=60) as r:
            lines = r.iter_lines()  # kept: a dropped line iterator closes the connection (httpcore)
            assert next(lines).startswith("data: ")  # running: holds the only row
            waiting = threading.Thread(target=post, args=(srv, {"model": "p5", "prompt": "x", "max_tokens": 2}))
            waiting.start()
            deadline = time.monotonic() + 10
            while engine.counts()["waiting"] < 1:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            full = post(srv, {"model": "p9", "prompt": "x", "max_tokens": 2})
            assert full.status_code == 429 and full.json()["error"]["code"] == "rate_limit_exceeded"
        # the client went away mid-stream: its row is cancelled, the waiting request runs
        waiting.join(timeout=30)
        deadline = time.monotonic() + 10
        while engine.counts()["running"] or engine.counts()["cancelled"] == before:
            assert time.monotonic() < deadline, engine.counts()
            time.sleep(0.02)
    finally:
        engine.max_batch, engine.max_waiting, engine.step_sleep = 64, 256, 0.0
    assert post(srv, {"model": "p2", "prompt": tables[0], "max_tokens": 4}).status_code == 200


def test_graceful_shutdown_finishes_running_requests(tmp_path):
    run = make_runs(tmp_path, {"run7": 7}) / "run7"  # a prefix run dir as --model: its base model + its prefix
    save_config(
        RunConfig(model=ModelConfig(name="tiny-gpt2"), method=MethodConfig(prefix_length=7)), run / "config.yaml"
    )
    state = load_state(str(run), [], device="cpu", precision="fp32", threads=1, drain_s=20, step_sleep=0.01)
    assert state.model_id == "tiny-gpt2" and list(state.prefixes) == ["run7"]
    server = Server(state)
    events = []
    reader = threading.Thread(target=lambda: events.extend(sse(server, {**long_stream_body(60), "model": "run7"})))
    reader.start()
    deadline = time.monotonic() + 10
    while not state.engine.rows:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    server.server.handle_exit(signal.SIGTERM, None)  # what uvicorn's SIGTERM handler calls
    reader.join(timeout=30)
    server.thread.join(timeout=30)
    assert not server.thread.is_alive() and not state.engine.accepting
    assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "length"
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/health")


def test_cli_parser():
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers())
    args = parser.parse_args(["serve", "--model", "tiny-gpt2", "--prefixes", "a", "b", "--port", "0"])
    assert args.func is cmd_serve and args.prefixes == ["a", "b"] and args.host == "127.0.0.1"


@pytest.mark.slow  # a fresh interpreter imports torch + transformers: ~10-20 s on a busy 2-core machine
def test_cli_serves_and_stops_on_sigterm(tmp_path):
    runs = make_runs(tmp_path / "runs", {"only": 3})
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefix_tuning.cli",
            "serve",
            "--model",
            "tiny-gpt2",
            "--prefixes",
            str(runs),
            "--port",
            "0",
            "--threads",
            "1",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line, line + proc.stderr.read()
        url = line.split()[-1].rsplit("/v1", 1)[0]
        assert [m["id"] for m in httpx.get(url + "/v1/models", timeout=30).json()["data"]] == ["tiny-gpt2", "only"]
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down cleanly, then re-raises the signal it caught, so the exit status is SIGTERM's
        assert proc.wait(timeout=30) == -signal.SIGTERM
        assert "stopped (0 requests cancelled)" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
