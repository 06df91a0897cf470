"""`python -m bench --backend URL`: the options, the environment the stack is given, the direct client's requests.

No process is started: the options are parsed, the stack's environment is built, and the direct client
of `throughput` is run against an in-process HTTP server.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web

from bench import throughput
from bench.__main__ import BACKEND_READY, BENCHMARKS, parser, selected
from bench.common import MODEL, ModelServer, model_server, stack_env
from bench.old_design import main as old_design_main
from shared.settings import parse_llm_table

URL = "http://127.0.0.1:8000"


def test_default_is_our_simulator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_API_KEY", "from-the-shell")  # read only with --backend
    cli = parser()
    args = cli.parse_args([])
    assert model_server(args) == ModelServer()
    assert not model_server(args).external
    assert selected(cli, args) == list(BENCHMARKS)
    env = stack_env("redis://127.0.0.1:1/0", "http://127.0.0.1:8081")
    assert json.loads(env["LLM_TABLE"]) == [[MODEL, "http://127.0.0.1:8081"]]
    assert "LLM_API_KEY" not in env


def test_backend_options_reach_the_stack_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLM_API_KEY", raising=False)
    cli = parser()
    args = cli.parse_args(
        ["throughput", "--backend", URL + "/v1/", "--backend-model", "albert-dummy", "--backend-key", "s3cret"]
    )
    server = model_server(args)
    assert server == ModelServer(URL, "albert-dummy", "s3cret")
    assert server.headers == {"Authorization": "Bearer s3cret"}
    assert "s3cret" not in repr(server)
    assert "s3cret" not in json.dumps(server.describe())
    assert server.url is not None
    env = stack_env("redis://127.0.0.1:1/0", server.url, server.model, server.api_key, STREAM_FLUSH_MS=100)
    (backend,) = parse_llm_table(env["LLM_TABLE"])  # as the worker and the API read it
    assert (backend.model, backend.url, backend.api_key) == ("albert-dummy", URL, None)
    assert env["LLM_API_KEY"] == "s3cret"
    assert env["STREAM_FLUSH_MS"] == "100"


def test_backend_key_defaults_to_llm_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_API_KEY", "from-the-shell")
    args = parser().parse_args(["--backend", URL])
    assert model_server(args) == ModelServer(URL, MODEL, "from-the-shell")
    monkeypatch.delenv("LLM_API_KEY")
    assert model_server(args).api_key is None
    assert model_server(args).headers == {}


def test_backend_runs_only_the_benchmarks_that_can() -> None:
    cli = parser()
    assert selected(cli, cli.parse_args(["--backend", URL])) == BACKEND_READY == ["throughput", "latency"]
    assert selected(cli, cli.parse_args(["latency", "--backend", URL])) == ["latency"]
    for argv in (["commands", "--backend", URL], ["--backend", "https://example.test"]):
        with pytest.raises(SystemExit):
            selected(cli, cli.parse_args(argv))


def test_old_design_reads_the_key_from_its_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The key travels to the old-design listener by environment, not on a command line that `ps` shows."""
    seen: list[tuple[object, ...]] = []

    class Thread:
        def __init__(self, target: object, args: tuple[object, ...], name: str) -> None:
            seen.append(args)

        def start(self) -> None:
            pass

        def join(self) -> None:
            pass

    monkeypatch.setenv("BENCH_API_KEY", "s3cret")
    monkeypatch.setattr("bench.old_design.threading.Thread", Thread)
    argv = ["old_design", "--redis-url", "redis://127.0.0.1:1/0", "--sim-url", URL, "--model", "albert-dummy"]
    monkeypatch.setattr("sys.argv", argv)
    old_design_main()
    assert seen[0][1:] == (URL, "old:requests", "albert-dummy", "s3cret")


@pytest.fixture
async def server_url() -> AsyncIterator[tuple[str, list[tuple[str | None, bytes]]]]:
    """An OpenAI-compatible stand-in that records (Authorization, body) and streams one chunk then [DONE]."""
    seen: list[tuple[str | None, bytes]] = []

    async def completions(request: web.Request) -> web.Response:
        seen.append((request.headers.get("Authorization"), await request.read()))
        chunk = orjson.dumps({"choices": [{"index": 0, "text": "Paris"}]})
        return web.Response(body=b"data: " + chunk + b"\n\ndata: [DONE]\n\n", content_type="text/event-stream")

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def test_direct_client_sends_the_backend_model_and_key(
    server_url: tuple[str, list[tuple[str | None, bytes]]],
) -> None:
    url, seen = server_url
    server = ModelServer(url, "albert-dummy", "s3cret")
    result = await throughput.direct(url, throughput.prompts(3), 2, 5, server)
    assert (result["jobs"], result["incomplete"]) == (3, 0)
    assert len(seen) == 3
    for authorization, body in seen:
        assert authorization == "Bearer s3cret"
        assert orjson.loads(body)["model"] == "albert-dummy"
    seen.clear()
    await throughput.direct(url, throughput.prompts(1), 1, 5)  # the default: our simulator's model, no key
    assert seen[0][0] is None
    assert orjson.loads(seen[0][1])["model"] == MODEL
