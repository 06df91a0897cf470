"""What operators see: Prometheus metrics, the live dashboard (in a real browser), JSON logs."""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest
from openai import OpenAI

from stack.processes import free_port
from tests.integration.conftest import Sim, Stack, assert_no_internal_details, wait_for, with_credentials

MODEL = "obs/model"
SMALL = "obs/small"
IDLE = "obs/idle"  # no worker: its batch stays in progress
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def stack(start_stack: Callable[..., Stack], start_sim: Callable[..., Sim], metrics_port: int) -> Stack:
    sim = start_sim(MODEL, ms_per_token=2)
    small = start_sim(SMALL, max_model_len=32)
    # Both workers are given the port: the second finds it taken, says so, and works on without metrics.
    stack = start_stack(
        [(MODEL, sim.url), (SMALL, with_credentials(small.url)), (IDLE, sim.url)],
        workers={MODEL: 1, SMALL: 1},
        LOG_FORMAT="json",
        WORKER_METRICS_PORT=metrics_port,
    )
    jobs = stack.http.post(
        "/v1/jobs",
        json=[{"prompt": f"question {i}", "params": {"max_tokens": 5}} for i in range(8)]
        + [{"model": SMALL, "prompt": "trop long pour ce petit modèle", "params": {"max_tokens": 100}}],
    ).json()
    for job in jobs:
        stack.wait_job(job["id"])
    client = OpenAI(base_url=f"{stack.url}/v1", api_key="test-key")
    lines = [
        {"custom_id": f"q{i}", "method": "POST", "url": "/v1/completions", "body": {"model": IDLE, "prompt": "x"}}
        for i in range(3)
    ]
    upload = client.files.create(file=("in.jsonl", b"\n".join(map(orjson.dumps, lines))), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/completions", completion_window="24h")
    wait_for(lambda: client.batches.retrieve(batch.id).status == "in_progress", 15, "the batch is queued")
    return stack


def test_metrics_count_requests_jobs_and_queues(stack: Stack) -> None:
    stack.http.get("/v1/jobs/unknown-id")
    with httpx.Client(base_url=stack.url) as anonymous:
        text = anonymous.get("/metrics").text
    assert f'spp_jobs_submitted_total{{model="{MODEL}"}} 8.0' in text
    assert 'route="/v1/jobs/{job_id}",status="404"' in text
    assert f'spp_queue_depth{{model="{MODEL}"}} 0.0' in text
    assert f'spp_workers_live{{model="{MODEL}"}} 1.0' in text


def test_workers_export_their_metrics(stack: Stack, metrics_port: int) -> None:
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    started = [line for line in text.splitlines() if line.startswith("spp_jobs_started_total{")]
    assert started
    for name in ("spp_time_to_first_token_seconds", "spp_job_queue_seconds", "spp_generation_seconds"):
        assert f"# TYPE {name} histogram" in text
    assert "spp_job_queue_seconds_count{" in text
    logs = "".join(path.read_text() for path in stack.logs.glob("worker-*.log"))
    assert "no metrics endpoint: cannot listen" in logs, "the second worker says why it has no metrics"


def test_dashboard_data_shows_throughput_latency_workers_and_failures(stack: Stack) -> None:
    data = stack.http.get("/dashboard/data").json()
    models = {model["id"]: model for model in data["models"]}
    assert models[MODEL]["succeeded"] >= 8
    assert sum(models[MODEL]["per_minute"]) >= 8
    assert models[MODEL]["latency_ms"]["p50"] > 0
    assert [worker["live"] for worker in models[MODEL]["workers_seen"]] == [True]
    (batch,) = data["batches"]
    assert (batch["status"], batch["total"], batch["completed"]) == ("in_progress", 3, 0)
    assert models[IDLE]["queued"] == 3
    (failure,) = models[SMALL]["failures"]
    assert failure["error"].startswith("backend_rejected: ")
    assert "maximum context length" in failure["error"]
    assert_no_internal_details(failure["error"])


def test_the_dashboard_renders_in_a_real_browser(stack: Stack, logs_dir: Path) -> None:
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    flags += ["--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=flags)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            console: list[str] = []
            page.on("console", lambda message: console.append(message.text))
            page.goto(f"{stack.url}/dashboard")
            page.wait_for_selector(f'section.model[data-model="{MODEL}"]', timeout=15_000)
            card = page.locator(f'section.model[data-model="{MODEL}"]')
            assert card.locator(".queued").inner_text() == "0"
            assert "backend_rejected" in page.locator(f'section.model[data-model="{SMALL}"] .failures').inner_text()
            assert "0 / 3" in page.locator("tr.batch").inner_text()
            assert page.locator("tr.batch .progress").count() == 1
            assert page.locator("tr.batch .progress .done").evaluate("part => part.style.width") == "0%"
            assert card.locator(".bars div").first.evaluate("bar => bar.style.height").endswith("px")
            assert not [line for line in console if "Content Security Policy" in line], console
            page.screenshot(path=str(logs_dir / "dashboard.png"), full_page=True)
        finally:
            browser.close()


def test_the_api_docs_render_without_the_internet(stack: Stack) -> None:
    """Every request of the page that is not to the API itself is refused: the page must render all the same."""
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import Route, sync_playwright

    elsewhere: list[str] = []

    def only_the_api(route: Route) -> None:
        if route.request.url.startswith(stack.url):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=flags)
        try:
            page = browser.new_page()
            page.route("**/*", only_the_api)
            page.goto(f"{stack.url}/docs")
            page.wait_for_selector(".opblock", timeout=20_000)
            assert "/v1/jobs" in page.content(), "the operations of /openapi.json are shown"
        finally:
            browser.close()
    assert elsewhere == [], "nothing is fetched from another host"


def test_the_dashboard_page_forbids_framing_sniffing_and_foreign_code(stack: Stack) -> None:
    response = stack.http.get("/dashboard")
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "connect-src 'self'" in policy
    assert "unsafe-inline" not in policy
    (script,) = re.findall(r"<script>(.*?)</script>", response.text, flags=re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}';" in policy, "the page's own script, and only it"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_logs_are_json_lines_with_the_facts_of_each_job(stack: Stack) -> None:
    lines = [line for path in stack.logs.glob("api-*.log") for line in path.read_text().splitlines() if line]
    assert lines
    for line in lines:
        entry = orjson.loads(line)
        assert {"time", "level", "logger", "message"} <= entry.keys()
    worker_lines = [
        orjson.loads(line)
        for path in stack.logs.glob("worker-*.log")
        for line in path.read_text().splitlines()
        if line.startswith("{")
    ]
    finished = [entry for entry in worker_lines if entry.get("event") == "job_finished"]
    assert finished
    assert {"job", "model", "attempt", "duration_ms", "status"} <= finished[0].keys()


def test_the_dashboard_needs_a_listed_client_outside_dev(
    start_stack: Callable[..., Stack], start_sim: Callable[..., Sim], tmp_path: Path
) -> None:
    keys = tmp_path / "keys.json"
    keys.write_bytes(
        orjson.dumps(
            {
                "ops": "key-ops-0123456789abcdefghijklmnopqrstuv",
                "platform": "key-platform-0123456789abcdefghijklmnopqrstuv",
            }
        )
    )
    sim = start_sim("obs/prod")
    stack = start_stack(
        [("obs/prod", sim.url)],
        headers={"Authorization": "Bearer key-ops-0123456789abcdefghijklmnopqrstuv"},
        ENV="prod",
        API_KEYS_FILE=str(keys),
        DASHBOARD_CLIENTS="ops",
    )
    assert stack.http.get("/dashboard/data").status_code == 200
    assert (
        stack.http.get(
            "/dashboard/data", headers={"Authorization": "Bearer key-platform-0123456789abcdefghijklmnopqrstuv"}
        ).status_code
        == 401
    )
    wait_for(lambda: stack.http.get("/dashboard").status_code == 200, 5, "the page is public")
