"""`albert-spp batch`: the installed command against real processes (API, workers, simulator)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from openai import OpenAI

from shared import keys
from shared.templates import render_prompt
from tests.integration.conftest import RedisServer, Sim, Stack, wait_for

MODEL = "AgentPublic/fabrique-reference-2"
SLOW = "cli/slow"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
SCRIPT = Path(sys.executable).with_name("albert-spp")

# Accounts with acronyms (expanded by the SPP template) and non-ASCII text.
TEXTS = [
    "Ma demande de RSA à la CAF est bloquée depuis trois mois.",
    "La préfecture ne répond pas pour mon titre de séjour, l'ANTS non plus.",
    "J'ai attendu deux heures au guichet de France Travail : accueil très aimable, merci.",
]


@pytest.fixture(scope="module")
def stack(start_stack: Callable[..., Stack], start_sim: Callable[..., Sim]) -> Stack:
    fast = start_sim(MODEL, prefill_ms=2, ms_per_token=1)
    # Four sequences at once, 50 ms a token: a batch of the slow model lasts a few seconds.
    slow = start_sim(SLOW, ms_per_token=50, max_num_seqs=4)
    return start_stack([(MODEL, fast.url), (SLOW, slow.url)])


@pytest.fixture
def client(stack: Stack) -> Iterator[OpenAI]:
    with OpenAI(base_url=stack.url + "/v1", api_key="test-key", max_retries=0, timeout=30) as client:
        yield client


def command(stack: Stack, *args: str | Path) -> list[str]:
    """The installed script (the console entry point of pyproject.toml), else the module."""
    program = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "client"]
    return [*program, "batch", *map(str, args)]


def environment(stack: Stack) -> dict[str, str]:
    # The URL and key from the environment, as a user would set them once.
    env = {name: value for name, value in os.environ.items() if not name.startswith(("ALBERT_SPP_", "OPENAI_"))}
    return {**env, "ALBERT_SPP_URL": stack.url, "ALBERT_SPP_API_KEY": "test-key"}


def run(stack: Stack, *args: str | Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(stack, *args), env=environment(stack), capture_output=True, text=True, timeout=timeout, check=False
    )


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    path.write_bytes(b"".join((line if isinstance(line, bytes) else orjson.dumps(line)) + b"\n" for line in lines))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def created_batch(stderr: str) -> str:
    found = re.search(r"created batch (batch-[0-9a-f]+)", stderr)
    assert found, stderr
    return found[1]


def chat_line(custom_id: str, text: str, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT,
        "body": {"model": MODEL, "messages": [{"role": "user", "content": text}], **body},
    }


def stored_files(redis_server: RedisServer) -> set[str]:
    return set(redis_server.client().scan_iter(match=keys.file("*", "*"), count=10_000))


def test_spp_lines_are_answered_in_input_order(stack: Stack, redis_server: RedisServer, tmp_path: Path) -> None:
    items = [{"id": f"spp-{i:03d}", "text": f"{TEXTS[i % len(TEXTS)]} (dossier {i})"} for i in range(300)]
    items.reverse()  # input order, not the order of the ids
    source = write_jsonl(tmp_path / "questions.jsonl", items)
    output = tmp_path / "answers.jsonl"

    done = run(stack, source, "-o", output, "--max-tokens", "8")

    assert done.returncode == 0, done.stderr
    batch_id = created_batch(done.stderr)
    assert f"300 answered, 0 failed -> {output}" in done.stderr
    assert not (tmp_path / "answers.jsonl.batch.json").exists(), "the state file is removed once OUTPUT is written"
    results = read_jsonl(output)
    assert [result["id"] for result in results] == [item["id"] for item in items]
    for index, result in enumerate(results):
        job = stack.http.get(f"/v1/jobs/{batch_id}-{index:06d}").json()
        assert job["status"] == "succeeded", job
        assert job["metadata"] == {"custom_id": result["id"]}
        assert result == {"id": result["id"], "answer": job["result"]["text"]}
        assert result["answer"]

        assert job["model"] == MODEL, "no --model: the server's first model"


def test_openai_lines_with_raw_output(stack: Stack, client: OpenAI, tmp_path: Path) -> None:
    lines = [chat_line(f"q-{i}", f"Question {i}", max_tokens=5, seed=i) for i in range(40)]
    lines.insert(7, chat_line("too-long", "Une très longue réponse", max_tokens=5000))  # over the context: refused
    source = write_jsonl(tmp_path / "requests.jsonl", lines)
    output = tmp_path / "raw.jsonl"

    done = run(stack, source, "-o", output, "--raw", "--model", "ignored", "--poll-interval", "0.2")

    assert done.returncode == 1, done.stderr  # one request failed
    assert "--model ignored" in done.stderr
    assert "40 answered, 1 failed" in done.stderr
    batch = client.batches.retrieve(created_batch(done.stderr))
    assert batch.output_file_id
    assert batch.error_file_id
    # The output file's lines, then the error file's, as the server sent them.
    expected = client.files.content(batch.output_file_id).content + client.files.content(batch.error_file_id).content
    assert output.read_bytes() == expected
    raw = read_jsonl(output)
    assert raw[-1]["custom_id"] == "too-long"
    assert raw[-1]["error"]["code"] == "backend_rejected"
    assert raw[0]["response"]["body"]["object"] == "chat.completion"


def test_openai_completions_lines_give_answers_and_errors(stack: Stack, tmp_path: Path) -> None:
    def line(custom_id: str, **body: Any) -> dict[str, Any]:
        return {"custom_id": custom_id, "method": "POST", "url": COMPLETIONS, "body": {"model": MODEL, **body}}

    lines = [line(f"c-{i}", prompt=f"Texte {i}", max_tokens=4) for i in range(10)]
    lines.insert(3, line("c-long", prompt="Texte", max_tokens=5000))
    source = write_jsonl(tmp_path / "completions.jsonl", lines)
    output = tmp_path / "completions-out.jsonl"

    done = run(stack, source, "-o", output)

    assert done.returncode == 1, done.stderr
    results = read_jsonl(output)
    assert [result["id"] for result in results] == [item["custom_id"] for item in lines]
    assert results[3]["error"]["code"] == "backend_rejected"
    assert results[3]["error"]["message"]
    assert all(result["answer"] for index, result in enumerate(results) if index != 3)


@pytest.mark.parametrize(
    ("lines", "named"),
    [
        ([{"id": "a", "text": "Bonjour"}, {"id": "b", "text": "Merci"}, chat_line("c", "Salut")], "line 3"),
        ([chat_line("a", "Salut"), b"", b"{not json"], "line 3"),
        ([{"id": "a", "text": "Bonjour"}, {"id": "a", "text": "Encore"}], "line 2"),
        ([chat_line("a", "Salut"), {**chat_line("b", "Salut"), "url": COMPLETIONS}], "line 2"),
        ([{"text": "Bonjour"}], "line 1"),
    ],
    ids=["mixed", "not-json", "duplicate-id", "two-urls", "no-id"],
)
def test_a_malformed_input_is_refused_before_upload(
    stack: Stack, redis_server: RedisServer, tmp_path: Path, lines: list[Any], named: str
) -> None:
    source = write_jsonl(tmp_path / "bad.jsonl", lines)
    output = tmp_path / "out.jsonl"
    before = stored_files(redis_server)

    done = run(stack, source, "-o", output)

    assert done.returncode == 2, done.stderr
    assert f"{source}: {named}:" in done.stderr
    assert "nothing was sent" in done.stderr
    assert stored_files(redis_server) == before
    assert not output.exists()
    assert not (tmp_path / "out.jsonl.batch.json").exists()


def test_a_batch_refused_by_the_server_prints_its_errors(stack: Stack, tmp_path: Path) -> None:
    unknown = chat_line("b", "Salut")
    unknown["body"]["model"] = "nope"
    lines = [chat_line("a", "Salut"), unknown, chat_line("c", "Salut", max_tokens=-1)]
    source = write_jsonl(tmp_path / "refused.jsonl", lines)
    output = tmp_path / "out.jsonl"

    done = run(stack, source, "-o", output)

    assert done.returncode == 2, done.stderr
    assert "failed: the server refused the input" in done.stderr
    assert re.search(r"line 2: .*nope.*\(model_not_found, body\.model\)", done.stderr), done.stderr
    assert re.search(r"line 3: .*\(invalid_request, body\.max_tokens\)", done.stderr), done.stderr
    assert not output.exists()
    assert not (tmp_path / "out.jsonl.batch.json").exists()


def test_an_interrupted_command_resumes_the_same_batch(
    stack: Stack, client: OpenAI, redis_server: RedisServer, tmp_path: Path
) -> None:
    items = [{"id": f"r-{i}", "text": TEXTS[i % len(TEXTS)]} for i in range(47)] + [{"id": "r-last", "text": TEXTS[0]}]
    source = write_jsonl(tmp_path / "questions.jsonl", items)
    output = tmp_path / "answers.jsonl"
    state = tmp_path / "answers.jsonl.batch.json"
    args = (source, "-o", output, "--model", SLOW, "--max-tokens", "10", "--poll-interval", "0.2")

    first = subprocess.Popen(
        command(stack, *args), env=environment(stack), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(state.exists, 30, "the state file")
        batch_id = orjson.loads(state.read_bytes())["batch_id"]

        def in_progress() -> bool:
            batch = client.batches.retrieve(batch_id)
            assert batch.request_counts is not None
            return batch.status == "in_progress" and batch.request_counts.completed >= 4

        wait_for(in_progress, 30, "the batch in progress")
        # A job still queued keeps its request (a finished one drops it): the SPP template, the options.
        (key,) = redis_server.client().scan_iter(match=keys.job(f"*:{batch_id}-{len(items) - 1:06d}"))
        request = orjson.loads(str(redis_server.client().hget(key, "request")))
        assert request["model"] == SLOW
        assert request["messages"] == [{"role": "user", "content": render_prompt("spp", items[-1]["text"])}]
        assert "Revenu de solidarité active" in request["messages"][0]["content"], "acronyms expanded"
        assert (request["max_tokens"], request["temperature"]) == (10, 0.2)
        first.send_signal(signal.SIGINT)
        _, stderr = first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()

    assert first.returncode == 130, stderr
    assert f"batch {batch_id} keeps running" in stderr
    assert "Run the same command again to resume it" in stderr
    assert state.exists()
    assert not output.exists()
    interrupted = client.batches.retrieve(batch_id)
    assert interrupted.status == "in_progress", "the batch ended before the command was interrupted"

    second = run(stack, *args)

    assert second.returncode == 0, second.stderr
    assert f"resuming batch {batch_id}" in second.stderr
    assert "created batch" not in second.stderr
    assert client.batches.list(limit=1).data[0].id == batch_id, "no other batch was created"
    results = read_jsonl(output)
    assert [result["id"] for result in results] == [item["id"] for item in items]
    assert all(result["answer"] for result in results)
    assert not state.exists()
