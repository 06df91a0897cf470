"""Issue 13, the API's side, over real processes: open access (any API key) only on a loopback address and said
at startup; a malformed `Last-Event-ID` refused before any `200`; a client gone in the middle of its request body
logged in one line, without a traceback and without anything stored."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.files import CHUNK_BYTES
from api.main import is_loopback, open_access_refusal
from shared import keys
from shared.settings import Settings
from shared.streams import checked_stream_id
from stack.processes import Service, free_port, http_ok, wait_until
from tests.integration.conftest import AUTH, RedisServer, Sim, Stack, read_events, wait_for

ROOT = Path(__file__).resolve().parents[2]
MODEL = "model-defects"


@pytest.fixture(scope="module")
def sim(start_sim: Callable[..., Sim]) -> Sim:
    return start_sim(MODEL, prefill_ms=2, ms_per_token=2)


@pytest.fixture(scope="module")
def stack(start_stack: Callable[..., Stack], sim: Sim) -> Stack:
    return start_stack([(MODEL, sim.url)], STREAM_FLUSH_MS=5)


def api_log(stack: Stack) -> Path:
    assert stack.api.log is not None
    return stack.api.log


def clean_env(**variables: str) -> dict[str, str]:
    """Only `variables` (ENV unset unless given), run from a directory without a `.env` file."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), **variables}


# ---- 1. open access: only on a loopback address, and said at startup ---------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LocalHost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("192.168.1.10", False),
        ("example.org", False),
        ("localhost.example.org", False),
        ("", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("host", "published", "refused"),
    [
        ("0.0.0.0", "127.0.0.1", False),  # docker-compose.yml's quick start: published on loopback only
        ("0.0.0.0", "::1", False),
        ("0.0.0.0", "", True),
        ("0.0.0.0", "0.0.0.0", True),
        ("0.0.0.0", "192.0.2.10", True),
        ("127.0.0.1", "", False),
    ],
)
def test_open_access_in_a_container_published_on_loopback_only(host: str, published: str, refused: bool) -> None:
    settings = Settings(_env_file=None, ENV="dev", API_HOST=host, API_PUBLISHED_HOST=published)
    refusal = open_access_refusal(settings)
    assert (refusal is not None) is refused, refusal
    if refusal is not None and published:
        assert f"not API_HOST={host} published on API_PUBLISHED_HOST={published}" in refusal


@pytest.mark.parametrize(
    ("env", "host"),
    [
        ({}, "0.0.0.0"),  # ENV unset: dev
        ({"ENV": "dev"}, "::"),
        ({"ENV": "unittest"}, "192.0.2.10"),
        ({"API_KEYS": "k1"}, "0.0.0.0"),  # keys configured do not change dev: any key would still be accepted
        ({"API_KEYS_FILE": str(ROOT / "api_keys.example.json")}, "0.0.0.0"),
    ],
)
def test_open_access_refuses_to_listen_beyond_loopback(env: dict[str, str], host: str, tmp_path: Path) -> None:
    process = subprocess.run(
        [sys.executable, "-m", "api"],
        env=clean_env(**env, API_HOST=host, API_PORT=str(free_port()), REDIS_URL="redis://127.0.0.1:1/0"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,  # without the check, the API would serve until killed
        check=False,
    )
    name = env.get("ENV", "dev")
    assert process.returncode != 0
    assert f"ENV={name} accepts any API key" in process.stderr
    assert f"not API_HOST={host}" in process.stderr
    assert "set ENV=staging or prod" in process.stderr
    assert "Traceback" not in process.stderr


@pytest.fixture
def start_api(redis_server: RedisServer, logs_dir: Path, tmp_path: Path) -> Iterator[Callable[..., tuple[str, Path]]]:
    """`python -m api` with only the given variables; returns its URL and its log once `/health` answers."""
    started: list[Service] = []

    def start(**variables: str) -> tuple[str, Path]:
        port = free_port()
        log = logs_dir / f"api-{port}.log"
        log_file = log.open("ab")
        env = clean_env(REDIS_URL=redis_server.url, API_PORT=str(port), LOG_FORMAT="json", **variables)
        process = subprocess.Popen(
            [sys.executable, "-m", "api"], env=env, cwd=tmp_path, stdout=log_file, stderr=subprocess.STDOUT
        )
        started.append(Service("api", process, log, log_file))
        host = variables.get("API_HOST", "127.0.0.1")
        url = f"http://{host}:{port}"
        wait_until(lambda: http_ok(f"{url}/health"), 30, "api", process)
        return url, log

    yield start
    for service in started:
        service.stop()


def log_lines(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def open_access_warnings(log: Path) -> list[str]:
    return [
        line["message"]
        for line in log_lines(log)
        if line["level"] == "WARNING" and "accepts any API key" in line["message"]
    ]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_open_access_on_loopback_serves_any_key_and_warns(
    start_api: Callable[..., tuple[str, Path]], host: str
) -> None:
    url, log = start_api(API_HOST=host)  # ENV unset: dev, as the seed
    response = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer anything"}, timeout=10)
    assert response.status_code == 200
    (warning,) = open_access_warnings(log)
    assert "ENV=dev" in warning


def test_open_access_warning_says_configured_keys_are_not_checked(start_api: Callable[..., tuple[str, Path]]) -> None:
    url, log = start_api(ENV="unittest", API_KEYS="k1")
    assert httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer not-k1"}, timeout=10).status_code == 200
    (warning,) = open_access_warnings(log)
    assert "ENV=unittest" in warning
    assert "API_KEYS" in warning


def test_no_open_access_warning_when_keys_are_required(start_api: Callable[..., tuple[str, Path]]) -> None:
    url, log = start_api(ENV="staging", API_KEYS="k1" * 16, WEBHOOK_SECRET_KEY="w" * 32)
    assert httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer other"}, timeout=10).status_code == 401
    assert not open_access_warnings(log)


def test_api_docs_false_hides_the_description_of_the_api(start_api: Callable[..., tuple[str, Path]]) -> None:
    shown, _ = start_api(ENV="unittest")
    hidden, _ = start_api(ENV="unittest", API_DOCS="false")
    for path in ("/docs", "/docs-assets/swagger-ui-bundle.js", "/openapi.json"):
        assert httpx.get(f"{shown}{path}", timeout=10).status_code == 200, path
        assert httpx.get(f"{hidden}{path}", timeout=10).status_code == 404, path
    assert httpx.get(f"{hidden}/v1/models", headers={"Authorization": "Bearer k"}, timeout=10).status_code == 200


def test_api_metrics_port_serves_metrics_there_and_only_there(start_api: Callable[..., tuple[str, Path]]) -> None:
    metrics_port = free_port()
    url, log = start_api(ENV="unittest", API_METRICS_PORT=str(metrics_port))
    metrics = f"http://127.0.0.1:{metrics_port}"
    answer = httpx.get(f"{metrics}/metrics", timeout=10)
    assert answer.status_code == 200
    assert "spp_queue_depth{" in answer.text, "the per-model gauges, read from Redis"
    assert httpx.get(f"{url}/metrics", timeout=10).status_code == 404
    assert "API_METRICS_PORT" in httpx.get(f"{url}/metrics", timeout=10).json()["detail"]
    assert httpx.get(f"{metrics}/health", timeout=10).status_code == 404
    assert httpx.get(f"{metrics}/v1/models", headers={"Authorization": "Bearer k"}, timeout=10).status_code == 404
    assert httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer k"}, timeout=10).status_code == 200
    lines = log.read_text().splitlines()
    assert [line for line in lines if not line.startswith("{")] == [], "LOG_FORMAT=json: every line, both sockets"
    assert any(f":{metrics_port}" in entry["message"] for entry in log_lines(log)), "the metrics socket is logged"


# ---- 4. Last-Event-ID: a malformed one is a 422 naming the header, before any 200 --------------------------


@pytest.fixture(scope="module")
def finished(stack: Stack) -> tuple[str, list[str]]:
    """A succeeded job and the ids of its events."""
    job_id = f"lei-{uuid.uuid4().hex[:12]}"
    submitted = stack.http.post(
        "/v1/jobs", json={"id": job_id, "prompt": "Ma carte grise", "params": {"max_tokens": 40}}
    )
    assert submitted.status_code == 202
    assert stack.wait_job(job_id)["status"] == "succeeded"
    return job_id, [event_id for _, event_id in event_ids(stack, job_id)]


def event_ids(stack: Stack, job_id: str, last_event_id: str | None = None) -> list[tuple[str, str]]:
    """(event, id) of the job's stream until it closes."""
    return [(event, event_id) for event, event_id, _ in read_events(stack.http, job_id, last_event_id)]


MALFORMED_EVENT_IDS = [
    "1_0",
    "1-0_0",
    "+1-0",
    "-1",
    "1-",
    "-",
    "1-0-0",
    "0x10-0",
    "1" * 21,
    "1" * 21 + "-0",
    "0-" + "1" * 21,
    "18446744073709551616-0",
    "0-18446744073709551616",
    "99999999999999999999-0",
    "abc",
]


@pytest.mark.parametrize("value", [*MALFORMED_EVENT_IDS, " 1", "1 ", "1\t", "\u0661-0", "\uff11-0", "1-\u00b2"])
def test_checked_stream_id_takes_only_redis_stream_ids(value: str) -> None:
    """What HTTP would strip or cannot carry too: a value that came another way is checked the same."""
    with pytest.raises(ValueError, match="Last-Event-ID"):
        checked_stream_id(value)


@pytest.mark.parametrize("value", ["0", "0-0", "1700000000000-3", "18446744073709551615-18446744073709551615", "007-0"])
def test_checked_stream_id_keeps_valid_ids(value: str) -> None:
    assert checked_stream_id(value) == value


@pytest.mark.parametrize("value", MALFORMED_EVENT_IDS)
def test_a_malformed_last_event_id_is_refused_naming_the_header(
    stack: Stack, finished: tuple[str, list[str]], value: str
) -> None:
    job_id, _ = finished
    before = api_log(stack).stat().st_size
    response = stack.http.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": value})
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["header", "last-event-id"]
    assert "Last-Event-ID" in error["msg"]
    with api_log(stack).open("rb") as log:
        log.seek(before)
        assert b"Traceback" not in log.read()


def test_a_leading_space_is_not_part_of_the_header(stack: Stack, finished: tuple[str, list[str]]) -> None:
    """HTTP strips the spaces around a header value: ` 1` arrives as `1`, a valid id."""
    job_id, _ = finished
    with socket.create_connection(("127.0.0.1", api_port(stack)), timeout=10) as sock:
        request = (
            f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: api\r\nAuthorization: {AUTH['Authorization']}\r\n"
            "Last-Event-ID:  1\r\nConnection: close\r\n\r\n"
        )
        sock.sendall(request.encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert b"event: done" in answer


def test_valid_last_event_ids_still_resume(stack: Stack, finished: tuple[str, list[str]]) -> None:
    job_id, ids = finished
    assert len(ids) >= 3
    assert event_ids(stack, job_id, "0") == event_ids(stack, job_id)  # before everything
    assert event_ids(stack, job_id, "0-0") == event_ids(stack, job_id)
    resumed = event_ids(stack, job_id, ids[0])
    assert [event_id for _, event_id in resumed] == ids[1:]
    bare_ms = ids[0].split("-")[0]  # a bare time: after its `-0` entry, as Redis reads it
    assert [event_id for _, event_id in event_ids(stack, job_id, bare_ms)] == [
        event_id for event_id in ids if event_id != f"{bare_ms}-0"
    ]
    assert event_ids(stack, job_id, "")[-1][0] == "done"  # empty: from the start


# ---- 8. a client gone in the middle of its request body --------------------------------------------------


def api_port(stack: Stack) -> int:
    return int(stack.url.rsplit(":", 1)[1])


def send_half(
    stack: Stack, path: str, content_type: str, body: bytes, sent_when: Callable[[], bool] | None = None
) -> None:
    """Headers announcing `body`, half of it, then the connection closed (after `sent_when()` when given)."""
    with socket.create_connection(("127.0.0.1", api_port(stack)), timeout=10) as sock:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: api\r\nAuthorization: {AUTH['Authorization']}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body[: len(body) // 2])
        if sent_when is not None:
            wait_for(sent_when, 10, "the first half stored")


def wait_for_the_disconnect(stack: Stack, before: int, path: str) -> str:
    """The API's log from `before`, once it has said that the client of `path` went away (or failed)."""

    def written() -> str:
        with api_log(stack).open("rb") as log:
            log.seek(before)
            return log.read().decode(errors="replace")

    wait_for(lambda: path in written() or "Traceback" in written(), 10, f"the API logged the disconnect on {path}")
    return written()


def multipart(file_bytes: bytes) -> tuple[str, bytes]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + file_bytes
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return f"multipart/form-data; boundary={boundary}", body


def file_keys(redis_server: RedisServer) -> list[str]:
    client = redis_server.client()
    try:
        return [
            key
            for pattern in ("spp:file:*", "spp:file-data:*", "spp:file-upload:*")
            for key in client.scan_iter(pattern)
        ]
    finally:
        client.close()


def test_an_aborted_upload_is_logged_quietly_and_stores_nothing(stack: Stack, redis_server: RedisServer) -> None:
    assert keys.file_upload("o", "u").startswith("spp:file-upload:")
    existing = set(file_keys(redis_server))
    line = b'{"custom_id": "r", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'
    content_type, body = multipart(line * (3 * CHUNK_BYTES // len(line)))  # half of it: over a chunk appended
    before = api_log(stack).stat().st_size
    uploading = lambda: any(key.startswith("spp:file-upload:") for key in set(file_keys(redis_server)) - existing)  # noqa: E731
    send_half(stack, "/v1/files", content_type, body, sent_when=uploading)
    written = wait_for_the_disconnect(stack, before, "/v1/files")
    assert "Traceback" not in written
    assert "ClientDisconnect" not in written
    (line_logged,) = [json.loads(entry) for entry in written.splitlines() if "/v1/files" in entry]
    assert line_logged["level"] in ("INFO", "DEBUG")
    assert line_logged["message"].startswith("client went away after ")
    wait_for(lambda: set(file_keys(redis_server)) == existing, 10, "the partial upload removed")
    assert stack.http.get("/v1/files/none").status_code == 404  # the API serves on
    metrics = stack.http.get("/metrics").text
    assert 'spp_http_requests_total{method="POST",route="/v1/files",status="499"}' in metrics


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/jobs", {"model": MODEL, "prompt": "x" * 20_000}),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x" * 20_000}]}),
        ("/anonymize", {"id": "gone", "text": "x" * 20_000}),
        (
            "/v1/batches",
            {"input_file_id": "file-" + "0" * 20_000, "endpoint": "/v1/completions", "completion_window": "24h"},
        ),
    ],
)
def test_an_aborted_json_body_is_quiet(
    stack: Stack, redis_server: RedisServer, path: str, body: dict[str, Any]
) -> None:
    before = api_log(stack).stat().st_size
    jobs_before = stack.http.get("/v1/models").json()["data"][0]
    send_half(stack, path, "application/json", json.dumps(body).encode())
    written = wait_for_the_disconnect(stack, before, path)
    assert "Traceback" not in written
    assert "ClientDisconnect" not in written
    (line_logged,) = [json.loads(entry) for entry in written.splitlines() if path in entry]
    assert line_logged["level"] in ("INFO", "DEBUG")
    assert line_logged["message"].startswith("client went away after ")
    assert stack.http.get("/v1/models").json()["data"][0]["queued"] == jobs_before["queued"]
    assert stack.http.get("/v1/jobs/gone").status_code == 404
