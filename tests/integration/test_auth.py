"""API keys over HTTP in prod: 401s, per-key isolation on every endpoint, reload without restart."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest

from tests.integration.conftest import RedisServer, Sim, Stack, wait_for

MODEL = "auth/model"
ALICE = {"Authorization": "Bearer key-alice-0123456789-0123456789abcdefghijklmnopqrstuv"}
BOB = {"Authorization": "Bearer key-bob-0123456789-0123456789abcdefghijklmnopqrstuv"}


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "api_keys.json"
    path.write_bytes(
        orjson.dumps(
            {
                "alice": "Bearer key-alice-0123456789-0123456789abcdefghijklmnopqrstuv",
                "bob": "key-bob-0123456789-0123456789abcdefghijklmnopqrstuv",
            }
        )
    )
    return path


@pytest.fixture(scope="module")
def stack(start_stack: Callable[..., Stack], start_sim: Callable[..., Sim], keys_file: Path) -> Stack:
    sim = start_sim(MODEL, ms_per_token=5)
    return start_stack([(MODEL, sim.url)], headers=ALICE, ENV="prod", API_KEYS_FILE=str(keys_file))


@pytest.fixture(scope="module")
def anonymous(stack: Stack) -> httpx.Client:
    return httpx.Client(base_url=stack.url, timeout=10)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs/x"),
        ("DELETE", "/v1/jobs/x"),
        ("GET", "/v1/jobs/x/events"),
        ("GET", "/v1/models"),
        ("POST", "/anonymize"),
        ("POST", "/prod/run/ditp-get-data"),
    ],
)
@pytest.mark.parametrize(
    "header",
    [
        None,
        "key-alice-0123456789-0123456789abcdefghijklmnopqrstuv",
        "Basic key-alice-0123456789-0123456789abcdefghijklmnopqrstuv",
        "Bearer wrong",
    ],
)
def test_every_endpoint_needs_a_valid_bearer_key(
    anonymous: httpx.Client, method: str, path: str, header: str | None
) -> None:
    headers = {"Authorization": header} if header is not None else {}
    response = anonymous.request(method, path, headers=headers, json={"prompt": "x"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["detail"]


@pytest.mark.parametrize("path", ["/health", "/ready", "/healthcheck"])
def test_health_and_readiness_need_no_key(anonymous: httpx.Client, path: str) -> None:
    assert anonymous.get(path).status_code == 200


def test_openapi_says_which_operations_need_a_key(anonymous: httpx.Client) -> None:
    """Every operation documented with the APIKey scheme answers 401 without a key; the others don't."""
    document = anonymous.get("/openapi.json").json()
    assert document["security"] == [{"APIKey": []}]
    assert document["components"]["securitySchemes"]["APIKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "`Authorization: Bearer <API key>`",
    }
    public: list[tuple[str, str, int]] = []
    protected: list[tuple[str, str, int]] = []
    for template, operations in document["paths"].items():
        path = template.replace("{", "").replace("}", "")  # /v1/jobs/{job_id} → /v1/jobs/job_id
        for method, operation in operations.items():
            status = anonymous.request(method, path, json={"prompt": "x"}).status_code
            needs_key = operation.get("security", document["security"]) != []
            (protected if needs_key else public).append((method, template, status))
    assert sorted((method, path) for method, path, _ in public) == [
        ("get", "/dashboard"),
        ("get", "/health"),
        ("get", "/healthcheck"),
        ("get", "/metrics"),
        ("get", "/ready"),
    ]
    assert [item for item in public if item[2] == 401] == []
    assert len(protected) > 15
    assert [item for item in protected if item[2] != 401] == []


def test_the_same_id_from_two_clients_names_two_jobs(stack: Stack) -> None:
    alice = stack.http.post("/v1/jobs", json={"id": "shared-id", "prompt": "Alice demande"})
    bob = stack.http.post("/v1/jobs", json={"id": "shared-id", "prompt": "Bob demande autre chose"}, headers=BOB)
    assert alice.status_code == bob.status_code == 202
    done_alice = stack.wait_job("shared-id")
    assert done_alice["status"] == "succeeded"
    wait_for(lambda: stack.http.get("/v1/jobs/shared-id", headers=BOB).json()["status"] == "succeeded", 20, "bob's job")
    done_bob = stack.http.get("/v1/jobs/shared-id", headers=BOB).json()
    assert done_bob["result"]["text"] != done_alice["result"]["text"]


def test_a_client_never_sees_streams_or_cancels_another_clients_job(stack: Stack) -> None:
    stack.http.post("/v1/jobs", json={"id": "alice-only", "prompt": "Secret", "params": {"max_tokens": 2000}})
    assert stack.http.get("/v1/jobs/alice-only", headers=BOB).status_code == 404
    assert stack.http.get("/v1/jobs/alice-only/events", headers=BOB).status_code == 404
    assert stack.http.delete("/v1/jobs/alice-only", headers=BOB).status_code == 404
    assert stack.http.post("/prod/run/ditp-get-data", json={"id": "alice-only"}, headers=BOB).status_code == 400
    assert stack.http.get("/v1/jobs/alice-only").json()["status"] in ("queued", "running")
    assert stack.http.delete("/v1/jobs/alice-only").json()["status"] == "cancelled"


def test_old_endpoints_are_isolated_too(stack: Stack) -> None:
    stack.http.post("/anonymize", json={"id": "exp-iso", "text": "Le récit d'Alice"})
    stack.wait_job("exp-iso")
    assert stack.http.post("/prod/run/ditp-get-data", json={"id": "exp-iso"}).status_code == 200
    assert stack.http.post("/prod/run/ditp-get-data", json={"id": "exp-iso"}, headers=BOB).status_code == 400


def test_keys_never_reach_redis_or_the_logs(stack: Stack, redis_server: RedisServer) -> None:
    stack.http.post("/v1/jobs", json={"prompt": "trace"}).raise_for_status()
    client = redis_server.client()
    dump = [key + repr(client.dump(key)) for key in client.scan_iter(count=1000)]
    assert not [entry for entry in dump if "0123456789" in entry]
    logs = "".join(path.read_text(errors="replace") for path in stack.logs.glob("*.log"))
    assert "0123456789" not in logs


def test_the_keys_file_is_reread_without_a_restart(stack: Stack, keys_file: Path) -> None:
    carol = {"Authorization": "Bearer key-carol-new-0123456789abcdefghijklmnopqrstuv"}
    assert stack.http.get("/v1/models", headers=carol).status_code == 401
    keys = orjson.loads(keys_file.read_bytes()) | {"carol": "key-carol-new-0123456789abcdefghijklmnopqrstuv"}
    keys_file.write_bytes(orjson.dumps(keys))
    wait_for(lambda: stack.http.get("/v1/models", headers=carol).status_code == 200, 10, "carol's key accepted")


@pytest.mark.parametrize("env", ["staging", "prod"])
def test_staging_and_prod_refuse_to_start_without_keys(env: str) -> None:
    process = subprocess.run(
        [sys.executable, "-m", "api"],
        env={"ENV": env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert process.returncode != 0
    assert f"ENV={env} needs API keys" in process.stderr.decode()


def test_a_broken_save_of_the_keys_file_revokes_its_keys_until_fixed(stack: Stack, keys_file: Path) -> None:
    """Keeping the keys loaded before would undo the revocations of the save that broke the file."""
    saved = keys_file.read_bytes()
    try:
        keys_file.write_bytes(saved[: len(saved) // 2])
        wait_for(lambda: stack.http.get("/v1/models").status_code == 401, 10, "the file's keys refused")
    finally:
        keys_file.write_bytes(saved)
    wait_for(lambda: stack.http.get("/v1/models").status_code == 200, 10, "the keys accepted again")


@pytest.mark.parametrize("key", ["short-key", "change-me-to-a-long-random-key"])
def test_prod_refuses_to_start_with_a_short_or_example_key(key: str, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    keys_file.write_bytes(orjson.dumps({"careless": f"Bearer {key}"}))
    process = subprocess.run(
        [sys.executable, "-m", "api"],
        env={
            "ENV": "prod",
            "PATH": "/usr/bin:/bin",
            "API_KEYS_FILE": str(keys_file),
            "WEBHOOK_SECRET_KEY": "w" * 32,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert process.returncode != 0
    assert "client 'careless': its key is" in process.stderr
    assert key not in process.stderr, "the key is never shown"
    assert "Traceback" not in process.stderr


@pytest.mark.parametrize("path", ["/v1/batches", "/v1/files", "/v1/jobs", "/v1/chat/completions"])
def test_a_request_without_a_key_is_refused_before_its_body_is_read(stack: Stack, path: str) -> None:
    """The head alone answers 401: a stranger cannot make the API wait for, or hold, megabytes of body."""
    host, port = stack.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        connection.sendall(f"{head}Content-Length: 1000000\r\n\r\n".encode())
        answer = connection.recv(4096).decode("latin-1")  # within the timeout, though no byte of body was sent
    assert answer.startswith("HTTP/1.1 401"), answer[:200]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/no-such-route", 404),
        ("GET", "/v1/jobs/x/y/z", 404),
        ("POST", "/health", 405),
        ("GET", "/health/", 307),
    ],
)
def test_a_path_no_route_serves_is_answered_as_to_anyone(
    anonymous: httpx.Client, method: str, path: str, status: int
) -> None:
    """The router's own answer, with or without a key: 404, 405, or the redirect to the path without a slash."""
    for headers in ({}, {"Authorization": "Bearer wrong"}, ALICE):
        assert anonymous.request(method, path, headers=headers, follow_redirects=False).status_code == status


def test_a_refusal_is_counted_under_its_route(anonymous: httpx.Client) -> None:
    """The middleware answers before the router: the metrics still name the route, not `unmatched`."""
    assert anonymous.get("/v1/jobs/x/events").status_code == 401
    assert anonymous.put("/v1/jobs/x").status_code == 401  # a route of another method
    metrics = anonymous.get("/metrics").text
    assert 'spp_http_requests_total{method="GET",route="/v1/jobs/{job_id}/events",status="401"}' in metrics
    assert 'spp_http_requests_total{method="PUT",route="/v1/jobs/{job_id}",status="401"}' in metrics
    assert not [line for line in metrics.splitlines() if 'route="unmatched",status="401"' in line]


@pytest.mark.parametrize("path", ["/v1/files", "/v1/batches"])
def test_the_openai_routes_refuse_in_openais_shape_too(anonymous: httpx.Client, path: str) -> None:
    """The `openai` client shows the message of `error`: a 401 of the file and batch routes carries it."""
    response = anonymous.get(path)
    assert response.status_code == 401
    assert response.json()["error"]["message"] == response.json()["detail"]
    assert response.json()["error"]["code"] == 401


def test_an_address_past_its_failed_authentications_is_refused_until_the_minute_ends(
    start_stack: Callable[..., Stack], stack: Stack, keys_file: Path
) -> None:
    """Counted over every API process: two here share the address's failures."""
    first, second = (
        start_stack(
            [tuple(entry) for entry in orjson.loads(stack.env["LLM_TABLE"])],
            workers={},
            headers=ALICE,
            ENV="prod",
            API_KEYS_FILE=str(keys_file),
            AUTH_FAILURES_PER_MINUTE=3,
        )
        for _ in range(2)
    )
    # The counters are per minute: start with time left in this one.
    wait_for(lambda: time.time() % 60 < 45, 20, "a minute with 15 s left")
    wrong = {"Authorization": "Bearer not-a-key-of-anyone-0123456789abcdef"}
    with httpx.Client(base_url=first.url, timeout=10) as one, httpx.Client(base_url=second.url, timeout=10) as two:
        for _ in range(5):
            assert one.get("/v1/models").status_code == 401, "no credential: no guess, not counted"
        for client in (one, one, two, two):
            assert client.get("/v1/models", headers=wrong).status_code == 401
        refused = two.get("/v1/models", headers=ALICE)
        assert refused.status_code == 429, "even the right key, once past the limit"
        assert one.get("/v1/models", headers=ALICE).status_code == 200, "the first learns at its next failure"
        assert one.get("/v1/models", headers=wrong).status_code == 401
        assert one.get("/v1/models", headers=ALICE).status_code == 429
        proxied = ALICE | {"X-Forwarded-For": "10.9.9.9"}  # from 127.0.0.1, a proxy of FORWARDED_ALLOW_IPS
        assert one.get("/v1/models", headers=proxied).status_code == 200, "the client behind the proxy is its own"
    assert refused.json()["limit"] == "AUTH_FAILURES_PER_MINUTE"
    assert "AUTH_FAILURES_PER_MINUTE" in refused.json()["detail"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    other_address = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(base_url=second.url, timeout=10, transport=other_address) as client:
        assert client.get("/v1/models", headers=ALICE).status_code == 200, "another address is not refused"
