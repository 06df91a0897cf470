"""Fixtures of the conformance suite: each real server started once per module, behind a TCP proxy, with the
integration tests' stack (redis-server, the API, an arq worker) pointed at it.

A server that cannot be installed (no compiler, no network) fails the suite loudly; `CONFORMANCE=skip` skips it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import pytest

from stack.processes import free_port
from tests.conformance import install
from tests.conformance.proxy import TcpProxy
from tests.conformance.servers import RealServer, ServerModule
from tests.integration.conftest import Stack, logs_dir, redis_server, start_stack

__all__ = ["logs_dir", "redis_server", "start_stack"]  # the integration tests' fixtures, used here too

#: Every server module the suite knows; those whose file exists are tested.
SERVER_MODULES = ("llama_server", "hf_server", "llama_cpp_server")


def _available() -> list[str]:
    return [name for name in SERVER_MODULES if importlib.util.find_spec(f"tests.conformance.{name}") is not None]


@pytest.fixture(scope="module", params=_available())
def real_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealServer]:
    if os.environ.get("CONFORMANCE") == "skip":
        pytest.skip("CONFORMANCE=skip")
    name: str = request.param
    module: ServerModule = importlib.import_module(f"tests.conformance.{name}")
    try:
        with module.start(tmp_path_factory.mktemp(name), free_port()) as server:
            yield server
    except install.InstallError as exc:
        pytest.fail(f"{name} could not be installed (CONFORMANCE=skip skips this suite): {exc}")


@pytest.fixture(scope="module")
def proxy(real_server: RealServer) -> Iterator[TcpProxy]:
    port = urlsplit(real_server.url).port
    assert port is not None
    with TcpProxy(port) as started:
        yield started


@pytest.fixture(scope="module")
def stack(real_server: RealServer, proxy: TcpProxy, start_stack: Callable[..., Stack]) -> Iterator[Stack]:
    """An API and one worker whose only model server is `real_server`, through `proxy`; stopped with it."""
    settings: dict[str, object] = {"JOB_MAX_ATTEMPTS": 3, "RETRY_BACKOFF": 0.1}
    if real_server.api_key is not None:
        settings["LLM_API_KEY"] = real_server.api_key
    started = start_stack([(real_server.model, proxy.url)], **settings)
    yield started
    started.http.close()
    started.api.stop()
    for services in started.workers.values():
        for service in services:
            service.stop()
