"""`transformers serve` (hf_server.py) started for real, and the worker's own client streaming from it.

A smoke test of the server module alone, before and beside the shared suite: the server installs (or comes from
the cache), starts, and one chat completion and one text completion stream through `worker.backends.ModelClient`
with the settings a worker would have.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from shared.models import GenerationRequest, Message
from shared.settings import Settings
from stack.processes import free_port
from tests.conformance import hf_server, install
from tests.conformance.servers import RealServer
from worker.backends import Delta, Event, Final, ModelClient

#: The first run on a machine installs torch and transformers into the cache (1 to 3 minutes on 2 cores).
INSTALL_TIMEOUT = 900

pytestmark = [pytest.mark.conformance, pytest.mark.integration, pytest.mark.timeout(INSTALL_TIMEOUT)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealServer]:
    if os.environ.get("CONFORMANCE") == "skip":
        pytest.skip("CONFORMANCE=skip")
    try:
        with hf_server.start(tmp_path_factory.mktemp("hf_server"), free_port()) as started:
            yield started
    except install.InstallError as exc:
        pytest.fail(f"transformers serve could not be installed (CONFORMANCE=skip skips this suite): {exc}")


def stream(server: RealServer, request: GenerationRequest) -> list[Event]:
    """Every event of one generation, as a worker's client gets them."""
    settings = Settings(_env_file=None, ENV="unittest", LLM_TABLE=f'[["{server.model}", "{server.url}"]]')

    async def run() -> list[Event]:
        client = ModelClient(settings, server.model)
        try:
            return [event async for event in client.stream(request, "0b6f3c1e-hf-server-smoke")]
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_a_chat_completion_streams_through_the_workers_client(server: RealServer) -> None:
    messages = [Message(role="user", content="Bonjour, ma carte grise n'a pas été reçue.")]
    request = GenerationRequest(model=server.model, messages=messages, max_tokens=8, temperature=0.0, top_p=1.0)

    *deltas, final = stream(server, request)

    assert deltas
    assert all(isinstance(delta, Delta) for delta in deltas)
    assert isinstance(final, Final)
    assert "".join(delta.text for delta in deltas if isinstance(delta, Delta)).strip()
    assert final.finish_reason == "length"  # the tiny model never ends by itself
    assert final.usage.completion_tokens == 8
    assert final.usage.prompt_tokens is not None
    assert final.usage.prompt_tokens > 0
    assert final.usage.total_tokens == final.usage.prompt_tokens + 8


def test_a_text_completion_streams_and_the_same_seed_gives_the_same_text(server: RealServer) -> None:
    def text(seed: int) -> str:
        request = GenerationRequest(
            model=server.model, prompt="Bonjour, ma carte", max_tokens=12, temperature=1.0, top_p=1.0, seed=seed
        )
        *deltas, final = stream(server, request)
        assert isinstance(final, Final)
        assert final.finish_reason == "length"
        return "".join(delta.text for delta in deltas if isinstance(delta, Delta))

    assert text(7) == text(7)
    assert text(8) != text(7)


def test_the_server_is_described_as_tested(server: RealServer) -> None:
    assert server.api_key is None
    assert server.n_ctx == 512
    assert {"chat", "completions", "seed"} <= server.features
