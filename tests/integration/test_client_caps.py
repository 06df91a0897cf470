"""A client's caps on uploads, batches and stored bytes, and the pace a request body must keep, through the real API
(uvicorn on a real redis-server) and raw sockets: a 429 naming the limit with the client's usage, or a 408 naming
the setting; nothing of a refused request is stored."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from shared import keys
from tests.integration.conftest import RedisServer, Stack, wait_for

MODEL = "client-caps/model"
MIB = 2**20
BOUNDARY = "caps-boundary"
IDLE, READ = 1.0, 2.5
"""BODY_IDLE_TIMEOUT and BODY_READ_TIMEOUT of the stack of the pace tests."""


@pytest.fixture(scope="module")
def stack(start_stack: Callable[..., Stack]) -> Stack:
    # No worker: nothing here reaches a model server.
    return start_stack(
        [(MODEL, "http://127.0.0.1:9")],
        workers={},
        CLIENT_MAX_UPLOADS=2,
        CLIENT_MAX_ACTIVE_BATCHES=2,
        CLIENT_MAX_STORED_BYTES=3 * MIB,
    )


@pytest.fixture(scope="module")
def paced(start_stack: Callable[..., Stack]) -> Stack:
    return start_stack([(MODEL, "http://127.0.0.1:9")], workers={}, BODY_IDLE_TIMEOUT=IDLE, BODY_READ_TIMEOUT=READ)


def client(stack: Stack, token: str) -> httpx.Client:
    """A client of its own (in ENV=unittest each token is a client): the tests' usages do not mix."""
    return httpx.Client(base_url=stack.url, timeout=10, headers={"Authorization": f"Bearer {token}"})


def upload(http: httpx.Client, data: bytes) -> httpx.Response:
    return http.post("/v1/files", files={"file": ("in.jsonl", data)}, data={"purpose": "batch"})


def scan(redis_server: RedisServer, pattern: str) -> list[str]:
    return sorted(redis_server.client().scan_iter(match=pattern, count=1000))


def uploads_in_progress(redis_server: RedisServer) -> int:
    redis = redis_server.client()
    counts: list[int] = [redis.zcard(key) for key in redis.scan_iter(match=keys.uploads("*"))]  # type: ignore[misc]
    return sum(counts)


# ---- raw HTTP/1.1 over a socket -----------------------------------------------------------------------------------


def multipart(data: bytes) -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    return head.encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def open_request(stack: Stack, path: str, body: bytes, token: str, content_type: str) -> socket.socket:
    """A socket that sent a POST's head (announcing `body`'s length) and none of its body."""
    address = urlsplit(stack.url)
    sock = socket.create_connection((address.hostname, address.port), timeout=10)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {address.netloc}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode())
    return sock


def answered(sock: socket.socket, wait: float) -> bool:
    """Whether the server has written (or closed) within `wait` seconds."""
    return bool(select.select([sock], [], [], wait)[0])


def read_answer(sock: socket.socket, timeout: float) -> tuple[int, dict[str, str], dict[str, Any]]:
    """Status, headers and JSON body of the answer, read until the server closes the connection (else fails)."""
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, orjson.loads(body)


def trickle(sock: socket.socket, body: bytes, every: float, until: float) -> bytes:
    """Send `body` a byte every `every` seconds until answered or `until` (monotonic); what is left unsent."""
    while body and time.monotonic() < until and not answered(sock, every):
        sock.sendall(body[:1])
        body = body[1:]
    return body


# ---- max_uploads ----------------------------------------------------------------------------------------------------


def test_uploads_beyond_max_uploads_are_429_with_the_usage(stack: Stack, redis_server: RedisServer) -> None:
    body = multipart(b'{"a": 1}\n')
    held = [open_request(stack, "/v1/files", body, "uploads", f"multipart/form-data; boundary={BOUNDARY}")]
    held.append(open_request(stack, "/v1/files", body, "uploads", f"multipart/form-data; boundary={BOUNDARY}"))
    for sock in held:
        sock.sendall(body[:20])
    wait_for(lambda: uploads_in_progress(redis_server) == 2, 10, "two uploads in progress")
    with client(stack, "uploads") as http:
        refused = upload(http, b'{"b": 2}\n')
        assert refused.status_code == 429
        answer = refused.json()
        assert {k: answer[k] for k in ("limit", "value", "usage", "requested")} == {
            "limit": "max_uploads",
            "value": 2,
            "usage": 2,
            "requested": 1,
        }
        assert refused.headers["retry-after"]
        assert upload(client(stack, "someone-else"), b'{"c": 3}\n').status_code == 200, "a cap of each client"
        held.pop().close()  # a client gone: its slot comes back
        wait_for(lambda: uploads_in_progress(redis_server) == 1, 10, "the slot given back")
        assert upload(http, b'{"b": 2}\n').status_code == 200
    held[0].sendall(body[20:])
    status, _, _ = read_answer(held[0], 10)
    assert status == 200
    held[0].close()


# ---- the pace of a body ---------------------------------------------------------------------------------------------


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def test_a_json_body_sent_a_byte_at_a_time_is_408_after_body_read_timeout(
    paced: Stack, sockets: list[socket.socket]
) -> None:
    body = orjson.dumps({"prompt": "x" * 200})
    started = time.monotonic()  # before the API has the request: its deadline comes later
    sockets.append(sock := open_request(paced, "/v1/jobs", body, "slowloris", "application/json"))
    left = trickle(sock, body, IDLE / 3, started + 10)  # never idle for BODY_IDLE_TIMEOUT
    status, headers, answer = read_answer(sock, 5)
    elapsed = time.monotonic() - started
    assert status == 408
    assert f"BODY_READ_TIMEOUT={READ:g}" in answer["detail"]
    assert headers["connection"] == "close", "the connection is freed (read_answer read until it was closed)"
    assert left, "answered before the body was whole"
    assert READ <= elapsed < READ + 3


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/batches"])
def test_a_stalled_json_body_is_408_after_body_idle_timeout(
    paced: Stack, sockets: list[socket.socket], path: str
) -> None:
    """Both a body a route reads itself and one FastAPI parses (whose read error it turns into a 400)."""
    body = b'{"prompt": "' + b"x" * 100 + b'"}'
    sockets.append(sock := open_request(paced, path, body, "stall", "application/json"))
    sock.sendall(body[:10])
    started = time.monotonic()
    status, headers, answer = read_answer(sock, 5)
    assert status == 408
    assert f"BODY_IDLE_TIMEOUT={IDLE:g}" in answer["detail"]
    assert headers["connection"] == "close"
    assert IDLE - 0.1 <= time.monotonic() - started < IDLE + 3
    assert paced.http.get("/v1/models").status_code == 200


def test_an_upload_may_be_slow_but_not_stalled(
    paced: Stack, redis_server: RedisServer, sockets: list[socket.socket]
) -> None:
    body = multipart(b"x" * 100)
    content_type = f"multipart/form-data; boundary={BOUNDARY}"
    sockets.append(sock := open_request(paced, "/v1/files", body, "slow-upload", content_type))
    started = time.monotonic()
    left = trickle(sock, body, IDLE / 3, started + READ + 1)
    assert time.monotonic() - started >= READ + 1, "no BODY_READ_TIMEOUT for uploads: still going"
    assert left
    status, _, answer = read_answer(sock, 5)  # then it stops sending
    assert status == 408
    assert f"BODY_IDLE_TIMEOUT={IDLE:g}" in answer["detail"]
    wait_for(lambda: uploads_in_progress(redis_server) == 0, 5, "its upload slot given back")
    assert scan(redis_server, keys.file_upload("*", "*")) == [], "nothing of it kept"


# ---- max_active_batches ---------------------------------------------------------------------------------------------


def test_a_batch_beyond_max_active_batches_is_429_and_nothing_is_stored(
    stack: Stack, redis_server: RedisServer
) -> None:
    line = {"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"model": MODEL, "prompt": "x"}}
    with client(stack, "batches") as http:
        file_id = upload(http, orjson.dumps(line) + b"\n").json()["id"]
        body = {"input_file_id": file_id, "endpoint": "/v1/completions", "completion_window": "24h"}
        created = [http.post("/v1/batches", json=body) for _ in range(2)]
        assert [answer.status_code for answer in created] == [200, 200]
        before = scan(redis_server, keys.batch("*", "*"))
        refused = http.post("/v1/batches", json=body)
        assert refused.status_code == 429
        answer = refused.json()
        assert {k: answer[k] for k in ("limit", "value", "usage", "requested")} == {
            "limit": "max_active_batches",
            "value": 2,
            "usage": 2,
            "requested": 1,
        }
        assert "max_active_batches" in answer["error"]["message"], "what the openai client shows"
        assert scan(redis_server, keys.batch("*", "*")) == before
        assert len(http.get("/v1/batches").json()["data"]) == 2
        first = created[0].json()["id"]
        assert http.post(f"/v1/batches/{first}/cancel").status_code == 200
        wait_for(lambda: http.get(f"/v1/batches/{first}").json()["status"] == "cancelled", 10, "cancelled")
        assert http.post("/v1/batches", json=body).status_code == 200, "an ended batch frees its place"


# ---- max_stored_bytes -----------------------------------------------------------------------------------------------


def test_uploads_past_max_stored_bytes_are_429_and_deleting_a_file_frees_room(
    stack: Stack, redis_server: RedisServer
) -> None:
    with client(stack, "stored") as http:
        kept = upload(http, b"x" * (2 * MIB))
        assert kept.status_code == 200
        refused = upload(http, b"y" * (2 * MIB))
        assert refused.status_code == 429
        answer = refused.json()
        assert (answer["limit"], answer["value"], answer["usage"]) == ("max_stored_bytes", 3 * MIB, 2 * MIB)
        assert scan(redis_server, keys.file_upload("*", "*")) == [], "nothing of the refused upload kept"
        assert http.delete(f"/v1/files/{kept.json()['id']}").status_code == 200
        assert upload(http, b"z" * (2 * MIB)).status_code == 200
