"""The `albert-spp` command without a server: input checks, SPP conversion, results, progress line, state, options."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import orjson
import pytest

from albert_spp.progress import Counts, Progress, RateMeter, format_duration, format_progress
from client import batch
from client.__main__ import default_api_key, main, parser
from client.lines import (
    MISSING,
    InputError,
    Kind,
    check_line,
    kind_of,
    read_input,
    result_of,
    spp_request,
    write_requests,
)
from shared.templates import render_prompt

CHAT = "/v1/chat/completions"


def chat_line(custom_id: str, url: str = CHAT, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": {"model": "m", "messages": [], **body}}


def write(path: Path, lines: list[Any]) -> Path:
    path.write_bytes(b"".join((line if isinstance(line, bytes) else orjson.dumps(line)) + b"\n" for line in lines))
    return path


# ---- input lines -------------------------------------------------------------------------------------


def test_the_kind_of_a_line_is_told_by_its_keys() -> None:
    assert kind_of(chat_line("a")) is Kind.OPENAI
    assert kind_of({"custom_id": "a"}) is Kind.OPENAI
    assert kind_of({"id": "a", "text": "Bonjour"}) is Kind.SPP
    assert kind_of({"text": "Bonjour"}) is Kind.SPP
    assert kind_of({"question": "Bonjour"}) is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"question": "Bonjour"}', "neither an OpenAI batch request"),
        (b'{"id": 3, "text": "Bonjour"}', "id must be a string"),
        (b'{"id": "", "text": "Bonjour"}', "id must be a string"),
        (b'{"id": "a", "text": "  "}', "text must be a non-empty string"),
        (b'{"id": "a"}', "text must be a non-empty string"),
        (orjson.dumps({**chat_line("a"), "custom_id": None}), "custom_id must be a string"),
        (orjson.dumps({**chat_line("a"), "method": "GET"}), "method must be 'POST'"),
        (orjson.dumps(chat_line("a", url="/v1/embeddings")), "url must be one of"),
        (orjson.dumps({**chat_line("a"), "body": "hello"}), "body must be a JSON object"),
        (orjson.dumps(chat_line("a", stream=True)), "stream is not supported"),
    ],
)
def test_a_malformed_line_is_named(raw: bytes, message: str) -> None:
    with pytest.raises(InputError, match=message) as refused:
        check_line(raw, 7)
    assert refused.value.line == 7
    assert str(refused.value).startswith("line 7: ")


def test_check_line_gives_kind_id_and_url() -> None:
    assert check_line(b'{"id": "a", "text": "Bonjour", "extra": 1}', 1) == (Kind.SPP, "a", None)
    assert check_line(orjson.dumps(chat_line("q", url="/v1/completions")), 1) == (Kind.OPENAI, "q", "/v1/completions")


def test_an_spp_file_is_read_with_its_ids_in_order_and_its_hash(tmp_path: Path) -> None:
    path = write(tmp_path / "in.jsonl", [{"id": "b", "text": "x"}, b"", b"   ", {"id": "a", "text": "y"}])
    checked = read_input(path)
    assert (checked.kind, checked.endpoint, checked.ids) == (Kind.SPP, CHAT, ["b", "a"])
    assert checked.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_openai_file_takes_the_endpoint_of_its_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "in.jsonl", [chat_line("1", url="/v1/completions"), chat_line("2", url="/v1/completions")])
    path.write_bytes(path.read_bytes().rstrip(b"\n"))  # no newline at the end
    checked = read_input(path)
    assert (checked.kind, checked.endpoint, checked.ids) == (Kind.OPENAI, "/v1/completions", ["1", "2"])


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([{"id": "a", "text": "x"}, b"", chat_line("b")], "line 3: an OpenAI batch request, but line 1 is an SPP line"),
        ([chat_line("a"), {"id": "b", "text": "x"}], "line 2: an SPP line, but line 1 is an OpenAI batch request"),
        ([{"id": "a", "text": "x"}, {"id": "a", "text": "y"}], "line 2: id 'a' already appears on line 1"),
        ([chat_line("a"), chat_line("a")], "line 2: id 'a' already appears on line 1"),
        ([chat_line("a"), chat_line("b", url="/v1/completions")], "line 2: url '/v1/completions' differs from line 1"),
        ([{"id": "a", "text": "x"}, b"oops"], "line 2: not valid JSON"),
        ([b"", b" "], "the file has no request"),
    ],
)
def test_a_file_is_refused_naming_the_line(tmp_path: Path, lines: list[Any], message: str) -> None:
    with pytest.raises(InputError) as refused:
        read_input(write(tmp_path / "in.jsonl", lines))
    assert str(refused.value).startswith(message)


def test_an_spp_line_becomes_a_chat_request_with_the_spp_template() -> None:
    request = spp_request("q-1", "Ma demande à la CAF", "model-a", 64, 0.5)
    content = render_prompt("spp", "Ma demande à la CAF")
    assert request == {
        "custom_id": "q-1",
        "method": "POST",
        "url": CHAT,
        "body": {
            "model": "model-a",
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 64,
            "temperature": 0.5,
        },
    }
    assert "Caisse d'allocations familiales" in content  # acronyms expanded
    assert "Ma demande à la" in content


def test_an_spp_file_is_converted_line_by_line(tmp_path: Path) -> None:
    path = write(tmp_path / "in.jsonl", [{"id": "b", "text": "Bonjour"}, b"", {"id": "a", "text": "Merci"}])
    target = io.BytesIO()
    with path.open("rb") as source:
        write_requests(source, target, "m", 10, 0.2)
    lines = [orjson.loads(line) for line in target.getvalue().splitlines()]
    assert lines == [spp_request("b", "Bonjour", "m", 10, 0.2), spp_request("a", "Merci", "m", 10, 0.2)]


# ---- results -----------------------------------------------------------------------------------------


def output_line(custom_id: str, choice: dict[str, Any], status: int = 200) -> dict[str, Any]:
    body = {"object": "chat.completion", "choices": [{"index": 0, **choice}]}
    return {"id": "r", "custom_id": custom_id, "response": {"status_code": status, "body": body}, "error": None}


def test_results_of_output_and_error_lines() -> None:
    chat = output_line("a", {"message": {"role": "assistant", "content": "Bonjour"}})
    assert result_of(chat) == {"id": "a", "answer": "Bonjour"}
    assert result_of(output_line("b", {"text": "Texte"})) == {"id": "b", "answer": "Texte"}
    assert result_of(output_line("c", {"message": {"role": "assistant", "content": None}})) == {"id": "c", "answer": ""}
    failed = {"id": "r", "custom_id": "d", "response": None, "error": {"code": "backend_rejected", "message": "long"}}
    assert result_of(failed) == {"id": "d", "error": {"code": "backend_rejected", "message": "long"}}
    refused = {
        "custom_id": "e",
        "response": {"status_code": 400, "body": {"error": {"message": "bad", "type": "invalid_request_error"}}},
        "error": None,
    }
    assert result_of(refused) == {"id": "e", "error": {"code": "invalid_request_error", "message": "bad"}}
    assert (
        result_of({"custom_id": "f", "response": {"status_code": 500, "body": "oops"}})["error"]["code"] == "http_500"
    )
    assert result_of({"custom_id": "g"})["error"]["code"] == "no_response"
    empty = {"custom_id": "h", "response": {"status_code": 200, "body": {"choices": []}}}
    assert result_of(empty)["error"]["code"] == "no_answer"


def test_results_follow_the_input_order_and_name_missing_ones(tmp_path: Path) -> None:
    output = write(
        tmp_path / "output.jsonl",
        [output_line("c", {"text": "C"}), output_line("a", {"text": "A é"})],
    )
    errors = write(
        tmp_path / "errors.jsonl", [{"custom_id": "b", "response": None, "error": {"code": "x", "message": "m"}}]
    )
    target = io.BytesIO()
    counts = batch.ordered_results(["a", "b", "missing", "c"], [output, errors], target)
    assert counts == (2, 2)
    assert [orjson.loads(line) for line in target.getvalue().splitlines()] == [
        {"id": "a", "answer": "A é"},
        {"id": "b", "error": {"code": "x", "message": "m"}},
        {"id": "missing", "error": MISSING},
        {"id": "c", "answer": "C"},
    ]


def test_raw_results_are_the_lines_as_they_came(tmp_path: Path) -> None:
    output = write(tmp_path / "output.jsonl", [output_line("c", {"text": "C"})])
    errors = tmp_path / "errors.jsonl"
    errors.write_bytes(b'{"custom_id": "b", "response": null, "error": {"code": "x", "message": "m"}}')
    target = io.BytesIO()
    assert batch.copy_lines([output, errors], target) == (1, 1)
    assert target.getvalue() == output.read_bytes() + errors.read_bytes() + b"\n"


# ---- progress ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "--:--"),
        (-1, "--:--"),
        (float("nan"), "--:--"),
        (0, "0:00"),
        (59.6, "1:00"),
        (754, "12:34"),
        (3725, "1:02:05"),
    ],
)
def test_durations(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


def test_the_progress_line() -> None:
    line = format_progress(Counts("in_progress", 300, 133, 2), 12.5)
    assert line == f"[{'#' * 10}{'-' * 14}]  45% 133 done, 2 failed / 300 | 12.5 req/s | 0:13 left | in_progress"
    assert format_progress(Counts("validating", 0, 0, 0), None) == (
        f"[{'-' * 24}]   0% 0 done, 0 failed / 0 | -- req/s | --:-- left | validating"
    )
    assert format_progress(Counts("in_progress", 10, 0, 0), 0.0).endswith("0.0 req/s | --:-- left | in_progress")
    done = format_progress(Counts("completed", 10, 9, 1), None, width=10)
    assert done == "[##########] 100% 9 done, 1 failed / 10 | -- req/s | 0:00 left | completed"


def test_the_rate_is_taken_over_a_window() -> None:
    meter = RateMeter(window=10)
    assert meter.rate() is None
    meter.add(0, 0)
    assert meter.rate() is None
    meter.add(2, 10)
    assert meter.rate() == 5
    for second in range(3, 31):
        meter.add(second, 10 + (second - 2) * 2)  # then 2 requests a second
    assert meter.rate() == pytest.approx(2)
    assert len(meter.samples) <= 12


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_on_a_terminal_one_line_is_redrawn() -> None:
    stream = io.StringIO()
    progress = Progress(stream, tty=True, clock=Clock())
    progress.update(Counts("in_progress", 100, 50, 0))
    progress.update(Counts("completed", 100, 99, 1))
    progress.close()
    text = stream.getvalue()
    assert text.count("\r") == 2
    assert text.count("\n") == 1
    assert text.endswith("\n")
    assert text.rstrip().endswith("| completed")


def test_elsewhere_a_line_every_few_seconds_and_at_each_status() -> None:
    stream = io.StringIO()
    clock = Clock()
    progress = Progress(stream, tty=False, every=5, clock=clock)
    for second in range(12):
        clock.now = second
        progress.update(Counts("in_progress", 100, second, 0))
    clock.now = 12.5
    progress.update(Counts("completed", 100, 100, 0))
    progress.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert [line.split("] ")[1].split(" done")[0] for line in lines] == ["  0% 0", "  5% 5", " 10% 10", "100% 100"]
    assert lines[1].split(" | ")[1] == "1.0 req/s"


# ---- state and options -------------------------------------------------------------------------------


def test_the_state_file_sits_next_to_the_output(tmp_path: Path) -> None:
    path = batch.state_path(tmp_path / "answers.jsonl")
    assert path == tmp_path / "answers.jsonl.batch.json"
    assert batch.load_state(path) is None
    state = batch.State("abc", "http://h:8000", {"kind": "spp", "model": None}, "file-1", "batch-1")
    batch.save_state(path, state)
    assert batch.load_state(path) == state
    path.write_text("{broken")
    assert batch.load_state(path) is None
    path.write_bytes(orjson.dumps({"version": 99}))
    assert batch.load_state(path) is None


def test_urls_are_normalized() -> None:
    assert batch.normalized_url("http://h:8000/") == "http://h:8000"
    assert batch.normalized_url("http://h:8000/v1/") == "http://h:8000"
    assert batch.normalized_url("https://h/api") == "https://h/api"


def test_options_and_their_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ALBERT_SPP_URL", "ALBERT_SPP_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    args = parser().parse_args(["batch", "in.jsonl", "-o", "out.jsonl"])
    assert (args.url, args.api_key, args.model, args.max_tokens, args.temperature, args.raw, args.poll_interval) == (
        "http://127.0.0.1:8000",
        None,
        None,
        None,
        None,
        False,
        1.0,
    )
    assert default_api_key() == "dev"
    monkeypatch.setenv("OPENAI_API_KEY", "openai-key")
    assert default_api_key() == "dev", "another service's key is never sent"
    monkeypatch.setenv("ALBERT_SPP_API_KEY", "spp-key")
    assert default_api_key() == "spp-key"
    monkeypatch.setenv("ALBERT_SPP_URL", "http://elsewhere:9000")
    assert parser().parse_args(["batch", "in.jsonl", "-o", "out.jsonl"]).url == "http://elsewhere:9000"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["batch", "in.jsonl"],
        ["batch", "in.jsonl", "-o", "o", "--max-tokens", "0"],
        ["batch", "in.jsonl", "-o", "o", "--temperature", "3"],
        ["batch", "in.jsonl", "-o", "o", "--poll-interval", "0"],
        ["nope"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "usage: albert-spp" in capsys.readouterr().err


def test_a_bad_input_exits_2_before_any_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The URL answers nothing: the checks come first.
    unreachable = ["--url", "http://127.0.0.1:9", "--api-key", "k"]
    mixed = write(tmp_path / "in.jsonl", [{"id": "a", "text": "x"}, chat_line("b")])
    assert main(["batch", str(mixed), "-o", str(tmp_path / "out.jsonl"), *unreachable]) == 2
    assert f"{mixed}: line 2: an OpenAI batch request, but line 1 is an SPP line" in capsys.readouterr().err
    assert main(["batch", str(tmp_path / "none.jsonl"), "-o", str(tmp_path / "out.jsonl"), *unreachable]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["batch", str(mixed), "-o", str(tmp_path / "no" / "out.jsonl"), *unreachable]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.batch.json"))


def test_an_unreachable_server_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path / "in.jsonl", [chat_line("a")])
    options = batch.Options(good, tmp_path / "out.jsonl", "http://127.0.0.1:9", "k", poll_interval=0.1)
    command = batch.BatchCommand(options)
    command.client = command.client.with_options(max_retries=0, timeout=2)
    err = io.StringIO()
    code = batch.run_command(command, err)
    assert code == 2
    assert "cannot reach http://127.0.0.1:9" in err.getvalue()


@pytest.mark.parametrize(
    ("url", "warned"),
    [
        ("http://10.1.2.3:8000", True),
        ("http://spp.example.org", True),
        ("https://spp.example.org", False),
        ("http://127.0.0.1:8000", False),
        ("http://localhost:8000", False),
        ("http://[::1]:8000", False),
    ],
)
def test_a_key_sent_in_clear_text_to_another_machine_is_warned_about(tmp_path: Path, url: str, warned: bool) -> None:
    err = io.StringIO()
    batch.BatchCommand(batch.Options(tmp_path / "in.jsonl", tmp_path / "out.jsonl", url, "a-key"), err=err)
    assert ("clear text" in err.getvalue()) is warned
    assert "a-key" not in err.getvalue()
