"""Webhooks over real processes: jobs submitted through the API with a webhook, ended by a worker (finish.lua and
cancel.lua write the events), delivered by `python -m webhooks` to a real HTTP receiver on 127.0.0.1 (allowed by
WEBHOOK_ALLOWED_HOSTS), whose signatures the independent `standardwebhooks` package verifies."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from shared import keys
from stack.processes import Service, free_port, start_python
from tests.integration.conftest import RedisServer, Sim, Stack, wait_for

MODEL = "AgentPublic/fabrique-reference-2"
IDLE = "idle/no-worker"
ALICE = {"Authorization": "Bearer alice"}
BOB = {"Authorization": "Bearer bob"}
SETTINGS = {
    "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
    "WEBHOOK_TIMEOUT": "2",
    "WEBHOOK_RETRY_SCHEDULE": "0.3,0.6,1",
    "WEBHOOK_CONCURRENCY_PER_CLIENT": "2",
    "WEBHOOK_RETRY_HOURS": "0.01",
}
"""Fast retries for 36 s, a short timeout and small lanes: what the tests exercise happens within seconds."""


# ---- a receiver ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = orjson.loads(self.body)
        return data


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class Receiver:
    """An HTTP server on 127.0.0.1 in threads of this process: records every POST, answers each path with its
    plan's replies in turn (the last one repeating), 200 for a path without a plan."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.plans: dict[str, list[Reply]] = {}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                hit = Hit(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time())
                with receiver._lock:
                    receiver.hits.append(hit)
                    plan = receiver.plans.get(self.path, [Reply()])
                    reply = plan.pop(0) if len(plan) > 1 else plan[0]
                if reply.delay:
                    time.sleep(reply.delay)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def to(self, path: str) -> list[Hit]:
        with self._lock:
            return [hit for hit in self.hits if hit.path == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    started = Receiver()
    yield started
    started.close()


# ---- the processes -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(start_stack: Callable[..., Stack], start_sim: Callable[..., Sim]) -> Stack:
    sim = start_sim(MODEL, IDLE, prefill_ms=10, ms_per_token=2)
    # IDLE has no worker: its jobs stay queued until cancelled.
    return start_stack([(MODEL, sim.url), (IDLE, sim.url)], workers={MODEL: 1}, headers=ALICE, **SETTINGS)


def start_deliverer(stack: Stack) -> Service:
    service = start_python(
        "webhooks", ["webhooks"], env=stack.env, log=stack.logs / f"webhooks-{uuid.uuid4().hex[:8]}.log"
    )
    stack.extra.append(service)
    return service


@pytest.fixture(scope="module")
def deliverer(stack: Stack) -> list[Service]:
    """The delivery process of the module (a list: a test may replace it)."""
    return [start_deliverer(stack)]


def unique(prefix: str = "w") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def secret_of(stack: Stack, headers: dict[str, str]) -> str:
    response = stack.http.get("/v1/webhooks/secret", headers=headers)
    assert response.status_code == 200
    secret: str = response.json()["secret"]
    return secret


def submit(stack: Stack, url: str, headers: dict[str, str] = ALICE, **job: Any) -> str:
    job_id = unique()
    body = {"id": job_id, "prompt": "Ma demande de RSA est bloquée", "params": {"max_tokens": 4}} | job
    response = stack.http.post(
        "/v1/jobs", json=body | {"webhook": {"url": url} | job.get("webhook", {})}, headers=headers
    )
    assert response.status_code == 202, response.text
    return job_id


def delivery(stack: Stack, job_id: str, headers: dict[str, str] = ALICE) -> dict[str, Any] | None:
    job = stack.http.get(f"/v1/jobs/{job_id}", headers=headers).json()
    state: dict[str, Any] | None = job["webhook"]["delivery"]
    return state


def wait_delivery(
    stack: Stack, job_id: str, until: Callable[[dict[str, Any]], bool], timeout: float = 20, **kwargs: Any
) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def done() -> bool:
        found.update(delivery(stack, job_id, **kwargs) or {})
        return bool(found) and until(found)

    wait_for(done, timeout, f"delivery of {job_id}")
    return found


# ---- the tests -----------------------------------------------------------------------------------------------


def test_a_finished_job_is_delivered_signed_with_the_clients_secret(
    stack: Stack, deliverer: list[Service], receiver: Receiver
) -> None:
    path = f"/{unique('ok')}"
    job_id = submit(stack, receiver.url + path)
    state = wait_delivery(stack, job_id, lambda state: state["status"] == "delivered")
    assert state["attempts"] == 1
    assert state["last_status_code"] == 200
    assert state["delivered_at"] is not None
    (hit,) = receiver.to(path)
    event = Webhook(secret_of(stack, ALICE)).verify(hit.body, hit.headers)
    assert event["type"] == "job.succeeded"
    assert event["data"]["id"] == job_id
    assert event["data"]["status"] == "succeeded"
    assert event["data"]["result"]["text"]
    assert event["data"]["webhook"] == {"url": receiver.url + path, "events": ["succeeded", "failed", "cancelled"]}
    assert hit.headers["webhook-id"].startswith("msg_")
    assert abs(int(hit.headers["webhook-timestamp"]) - time.time()) < 30
    with pytest.raises(WebhookVerificationError):
        Webhook(secret_of(stack, BOB)).verify(hit.body, hit.headers)
    counts = stack.http.get("/dashboard/data").json()["webhooks"]
    assert counts["delivered"] >= 1
    assert {"failed_attempts", "given_up", "dropped", "retrying", "backlog"} <= counts.keys()


def test_a_cancelled_job_is_delivered_and_unwanted_ends_are_not(
    stack: Stack, deliverer: list[Service], receiver: Receiver
) -> None:
    cancelled_path, unwanted_path = f"/{unique('cancel')}", f"/{unique('unwanted')}"
    cancelled = submit(stack, receiver.url + cancelled_path, model=IDLE)
    assert stack.http.delete(f"/v1/jobs/{cancelled}").status_code == 200
    unwanted = submit(stack, receiver.url + unwanted_path, webhook={"events": ["failed"]})
    wait_delivery(stack, cancelled, lambda state: state["status"] == "delivered")
    assert receiver.to(cancelled_path)[0].payload["type"] == "job.cancelled"
    assert stack.wait_job(unwanted)["status"] == "succeeded"
    time.sleep(0.5)  # nothing is coming: give a wrong delivery the time to show
    assert receiver.to(unwanted_path) == []
    assert delivery(stack, unwanted) is None


def test_a_failing_receiver_is_retried_under_one_id_until_it_recovers(
    stack: Stack, deliverer: list[Service], receiver: Receiver
) -> None:
    path = f"/{unique('flaky')}"
    receiver.plans[path] = [Reply(500), Reply(503, {"Retry-After": "1"}), Reply(200)]
    job_id = submit(stack, receiver.url + path)
    pending = wait_delivery(stack, job_id, lambda state: state["attempts"] >= 1)
    assert pending["status"] in ("pending", "delivered")
    state = wait_delivery(stack, job_id, lambda state: state["status"] == "delivered")
    assert state["attempts"] == 3
    hits = receiver.to(path)
    assert [hit.headers["webhook-id"] for hit in hits] == [hits[0].headers["webhook-id"]] * 3
    assert hits[2].at - hits[1].at >= 1.0, "the receiver's Retry-After was waited for"
    secret = secret_of(stack, ALICE)
    for hit in hits:
        Webhook(secret).verify(hit.body, hit.headers)


def test_a_redirect_is_a_failed_attempt_never_followed(
    stack: Stack, deliverer: list[Service], receiver: Receiver
) -> None:
    path, target = f"/{unique('redirect')}", f"/{unique('target')}"
    port = receiver.url.rpartition(":")[2]
    receiver.plans[path] = [Reply(307, {"Location": f"http://localhost:{port}{target}"})]
    job_id = submit(stack, receiver.url + path)
    state = wait_delivery(stack, job_id, lambda state: state["attempts"] >= 2)
    assert state["last_status_code"] == 307
    assert state["status"] in ("pending", "failed")
    assert receiver.to(target) == []


def test_addresses_not_allowed_are_refused_at_submission(stack: Stack) -> None:
    for url in ("http://10.0.0.1/hook", "http://localhost:9/hook", "http://[::1]/hook", "http://169.254.169.254/"):
        body = {"prompt": "x", "webhook": {"url": url}}
        response = stack.http.post("/v1/jobs", json=body)
        assert response.status_code == 422, url
        assert response.json()["detail"][0]["loc"][-2:] == ["webhook", "url"]


def test_a_slow_receiver_of_one_client_holds_up_no_other(
    stack: Stack, deliverer: list[Service], receiver: Receiver
) -> None:
    slow, quick = f"/{unique('slow')}", f"/{unique('quick')}"
    receiver.plans[slow] = [Reply(200, delay=1.5)]
    alice_jobs = [submit(stack, receiver.url + slow) for _ in range(8)]
    wait_for(lambda: len(receiver.to(slow)) >= 2, 20, "alice's lane full")
    bob_job = submit(stack, receiver.url + quick, headers=BOB)
    ended: dict[str, Any] = {}

    def bob_ended() -> bool:
        ended.update(stack.http.get(f"/v1/jobs/{bob_job}", headers=BOB).json())
        return ended["finished_at"] is not None

    wait_for(bob_ended, 20, "bob's job")
    wait_for(lambda: len(receiver.to(quick)) == 1, 10, "bob's delivery")
    finished_at = datetime.fromisoformat(ended["finished_at"].replace("Z", "+00:00")).timestamp()
    assert receiver.to(quick)[0].at - finished_at < 1.0, "bob waited for alice's receiver"
    assert len(receiver.to(slow)) < len(alice_jobs), "alice's deliveries are still going on"
    Webhook(secret_of(stack, BOB)).verify(receiver.to(quick)[0].body, receiver.to(quick)[0].headers)
    assert secret_of(stack, ALICE) != secret_of(stack, BOB)
    wait_for(lambda: len(receiver.to(slow)) >= len(alice_jobs), 30, "alice's deliveries")


def test_the_delivery_process_killed_mid_run_loses_no_event(
    stack: Stack, deliverer: list[Service], receiver: Receiver
) -> None:
    path = f"/{unique('restart')}"
    receiver.plans[path] = [Reply(500), Reply(200, delay=0.3)]
    jobs = [submit(stack, receiver.url + path) for _ in range(12)]
    wait_for(lambda: len(receiver.to(path)) >= 3, 20, "deliveries under way")
    deliverer[0].kill()
    for job_id in jobs:
        stack.wait_job(job_id)
    deliverer[0] = start_deliverer(stack)
    for job_id in jobs:
        wait_delivery(stack, job_id, lambda state: state["status"] == "delivered", timeout=60)
    delivered = {hit.headers["webhook-id"] for hit in receiver.to(path)}
    assert len(delivered) == len(jobs), "one event per job, each delivered"


def test_an_event_whose_job_is_gone_is_dropped(
    stack: Stack, deliverer: list[Service], redis_server: RedisServer
) -> None:
    client = redis_server.client()

    def dropped() -> int:
        count: str | None = client.hget(keys.webhook_stats(), "dropped")  # type: ignore[assignment]
        return int(count or 0)

    before = dropped()
    entry: str = client.xadd(keys.webhook_events(), {"k": f"nobody:{unique()}", "e": "succeeded", "t": "1"})  # type: ignore[assignment]
    wait_for(lambda: dropped() > before, 10, "the event dropped")
    assert client.xrange(keys.webhook_events(), entry, entry) == []
    assert client.zscore(keys.webhook_retries(), f"msg_{entry}") is None


def test_the_delivery_process_reports_healthy_while_it_beats(stack: Stack, deliverer: list[Service]) -> None:
    """The container's health check (`python -m webhooks.healthcheck`) finds this host's process beating."""
    check = subprocess.run(
        [sys.executable, "-m", "webhooks.healthcheck"],
        env={**os.environ, **stack.env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert check.returncode == 0, check.stderr


def test_the_delivery_process_serves_its_metrics(stack: Stack, deliverer: list[Service], receiver: Receiver) -> None:
    """With WEBHOOK_METRICS_PORT, the process (the only one running) counts its deliveries on `/metrics`."""
    port = free_port()
    deliverer[0].stop()
    deliverer[0] = start_python(
        "webhooks",
        ["webhooks"],
        env=stack.env | {"WEBHOOK_METRICS_PORT": str(port)},
        log=stack.logs / f"webhooks-{uuid.uuid4().hex[:8]}.log",
    )
    stack.extra.append(deliverer[0])
    path = f"/{unique('metrics')}"
    job_id = submit(stack, receiver.url + path)
    wait_delivery(stack, job_id, lambda state: state["status"] == "delivered")
    found: dict[str, str] = {}

    def counted() -> bool:
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        except httpx.HTTPError:
            return False
        found["text"] = text
        return 'spp_webhooks_delivered_total{type="job.succeeded"} 1.0' in text

    wait_for(counted, 10, "the delivery counted on /metrics")
    assert "spp_webhooks_delivery_seconds_bucket" in found["text"]
    assert "spp_webhooks_in_flight 0.0" in found["text"]


# ---- batches -------------------------------------------------------------------------------------------------


def chat_line(custom_id: str, model: str = MODEL) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": "Bonjour"}], "max_tokens": 3}
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})


def create_batch(stack: Stack, lines: list[bytes], webhook: dict[str, Any]) -> dict[str, Any]:
    files = {"file": ("input.jsonl", b"\n".join(lines) + b"\n")}
    uploaded = stack.http.post("/v1/files", files=files, data={"purpose": "batch"})
    assert uploaded.status_code == 200, uploaded.text
    body = {
        "input_file_id": uploaded.json()["id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "webhook": webhook,
    }
    created = stack.http.post("/v1/batches", json=body)
    assert created.status_code == 200, created.text
    batch: dict[str, Any] = created.json()
    return batch


def test_a_batchs_end_is_delivered_with_the_batch_object(
    stack: Stack, deliverer: list[Service], receiver: Receiver
) -> None:
    path = f"/{unique('batch')}"
    batch = create_batch(stack, [chat_line("a"), chat_line("b")], {"url": receiver.url + path})
    assert batch["webhook"] == {
        "url": receiver.url + path,
        "events": ["completed", "failed", "expired", "cancelled"],
        "delivery": None,
    }
    wait_for(lambda: len(receiver.to(path)) == 1, 30, "the batch's delivery")
    event = Webhook(secret_of(stack, ALICE)).verify(receiver.to(path)[0].body, receiver.to(path)[0].headers)
    assert event["type"] == "batch.completed"
    assert event["data"]["id"] == batch["id"]
    assert event["data"]["status"] == "completed"
    assert event["data"]["request_counts"] == {"total": 2, "completed": 2, "failed": 0}

    def delivered() -> bool:
        shown = stack.http.get(f"/v1/batches/{batch['id']}").json()["webhook"]["delivery"]
        return shown is not None and shown["status"] == "delivered"

    wait_for(delivered, 10, "the batch's delivery state")


def test_a_failed_and_a_cancelled_batch_are_delivered_as_asked(
    stack: Stack, deliverer: list[Service], receiver: Receiver
) -> None:
    failed_path, cancelled_path = f"/{unique('bfail')}", f"/{unique('bcancel')}"
    failed = create_batch(stack, [b"not json"], {"url": receiver.url + failed_path, "events": ["failed"]})
    cancelled = create_batch(
        stack, [chat_line(f"c{i}", IDLE) for i in range(3)], {"url": receiver.url + cancelled_path}
    )
    wait_for(lambda: stack.http.get(f"/v1/batches/{cancelled['id']}").json()["status"] == "in_progress", 20, "queued")
    assert stack.http.post(f"/v1/batches/{cancelled['id']}/cancel").status_code == 200
    wait_for(lambda: len(receiver.to(failed_path)) == 1 and len(receiver.to(cancelled_path)) == 1, 30, "deliveries")
    assert receiver.to(failed_path)[0].payload["type"] == "batch.failed"
    assert receiver.to(failed_path)[0].payload["data"]["id"] == failed["id"]
    assert receiver.to(cancelled_path)[0].payload["type"] == "batch.cancelled"


def test_a_batch_webhook_to_an_address_not_allowed_is_refused(stack: Stack) -> None:
    body = {
        "input_file_id": "file-x",
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "webhook": {"url": "http://10.1.1.1/hook"},
    }
    response = stack.http.post("/v1/batches", json=body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][-2:] == ["webhook", "url"]


# ---- a client's default webhook ------------------------------------------------------------------------------


def test_a_clients_default_webhook_and_secret_come_from_its_policy(
    stack: Stack,
    deliverer: list[Service],
    receiver: Receiver,
    start_stack: Callable[..., Stack],
    tmp_path: Path,
) -> None:
    """A second API on the same Redis, whose keys file gives client `caf` a default webhook and its own secret:
    its jobs without a webhook (over /v1/jobs and the old /anonymize) are delivered there, signed with that secret;
    a job's own webhook wins."""
    default_path, own_path = f"/{unique('default')}", f"/{unique('own')}"
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    keys_file = tmp_path / "keys.json"
    policy = {
        "key": "key-caf-0123456789abcdefghijklmnopqrstuv",
        "webhook_url": receiver.url + default_path,
        "webhook_secret": secret,
    }
    keys_file.write_bytes(orjson.dumps({"caf": policy}))
    caf = {"Authorization": "Bearer key-caf-0123456789abcdefghijklmnopqrstuv"}
    api = start_stack(
        [tuple(entry) for entry in orjson.loads(stack.env["LLM_TABLE"])],
        workers={},
        headers=caf,
        ENV="staging",
        API_KEYS_FILE=str(keys_file),
        **SETTINGS,
    )
    assert secret_of(api, caf) == secret
    plain = api.http.post("/v1/jobs", json={"prompt": "Ma carte vitale", "params": {"max_tokens": 4}})
    assert plain.status_code == 202, plain.text
    assert plain.json()["webhook"]["url"] == receiver.url + default_path
    legacy = api.http.post("/anonymize", json={"id": unique("old"), "text": "Mon dossier CAF est bloqué"})
    assert legacy.status_code == 200, legacy.text
    own = submit(api, receiver.url + own_path, headers=caf)
    wait_for(lambda: len(receiver.to(default_path)) == 2 and len(receiver.to(own_path)) == 1, 30, "deliveries")
    delivered = {Webhook(secret).verify(hit.body, hit.headers)["data"]["id"] for hit in receiver.to(default_path)}
    assert delivered == {plain.json()["id"], legacy.json()["body"]["id"]}
    assert Webhook(secret).verify(receiver.to(own_path)[0].body, receiver.to(own_path)[0].headers)["data"]["id"] == own
