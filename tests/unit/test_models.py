"""The shapes of jobs: submission validation, limits, fingerprints and the public JSON of a record."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from api.jobs import request_json
from shared.models import GenerationRequest, JobCreate, Limits, Message, MetadataValue, fingerprint, public_job
from shared.settings import Settings
from shared.templates import render_prompt
from tests.unit.conftest import MODEL, job_record, make_settings

LIMITS = Limits(max_prompt_chars=10, max_messages=2, max_tokens=100)
SETTINGS = make_settings()


def validate(data: dict[str, Any], limits: Limits | None = None) -> JobCreate:
    context = {"limits": limits} if limits is not None else None
    return JobCreate.model_validate(data, context=context)


# ---- JobCreate ----------------------------------------------------------------------------------------


def test_job_with_prompt_only_is_valid() -> None:
    job = validate({"prompt": "Bonjour"})

    assert job.prompt == "Bonjour"
    assert job.messages is None
    assert job.id is None
    assert job.params.max_tokens is None


def test_job_with_messages_only_is_valid() -> None:
    job = validate({"messages": [{"role": "user", "content": "Bonjour"}]})

    assert job.messages == [Message(role="user", content="Bonjour")]


def test_job_with_both_prompt_and_messages_is_refused() -> None:
    with pytest.raises(ValidationError, match="exactly one of 'prompt' or 'messages'"):
        validate({"prompt": "a", "messages": [{"role": "user", "content": "b"}]})


def test_job_with_neither_prompt_nor_messages_is_refused() -> None:
    with pytest.raises(ValidationError, match="exactly one of 'prompt' or 'messages'"):
        validate({"params": {"max_tokens": 5}})


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"prompt": ""}, id="empty-prompt"),
        pytest.param({"messages": []}, id="no-messages"),
        pytest.param({"messages": [{"role": "robot", "content": "x"}]}, id="bad-role"),
    ],
)
def test_job_with_empty_or_malformed_input_is_refused(data: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        validate(data)


def test_stop_string_becomes_a_list() -> None:
    job = validate({"prompt": "a", "params": {"stop": "\n\n"}})

    assert job.params.stop == ["\n\n"]


def test_stop_list_is_kept() -> None:
    assert validate({"prompt": "a", "params": {"stop": ["x", "y"]}}).params.stop == ["x", "y"]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"prompt": "a", "urgency": 1}, id="job"),
        pytest.param({"prompt": "a", "params": {"top_k": 5}}, id="params"),
        pytest.param({"messages": [{"role": "user", "content": "b", "name": "x"}]}, id="message"),
    ],
)
def test_extra_fields_are_refused(data: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        validate(data)


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param({"nested": {"a": 1}}, id="nested-value"),
        pytest.param({"list": [1, 2]}, id="list-value"),
        pytest.param({"k" * 65: 1}, id="long-key"),
        pytest.param({f"k{n}": n for n in range(33)}, id="too-many-keys"),
    ],
)
def test_metadata_must_be_a_small_flat_mapping(metadata: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="metadata"):
        validate({"prompt": "a", "metadata": metadata})


def test_metadata_accepts_scalar_values() -> None:
    metadata = {"s": "x", "i": 1, "f": 1.5, "b": True, "n": None}

    assert validate({"prompt": "a", "metadata": metadata}).metadata == metadata


@pytest.mark.parametrize("job_id", ["a", "A1", "job-1.2_3", "x:y@z=w+v", "9" * 200])
def test_job_id_pattern_accepts(job_id: str) -> None:
    assert validate({"id": job_id, "prompt": "a"}).id == job_id


@pytest.mark.parametrize("job_id", ["", "-a", ".a", "a b", "a/b", "é", "a\n", "9" * 201])
def test_job_id_pattern_refuses(job_id: str) -> None:
    with pytest.raises(ValidationError, match="id"):
        validate({"id": job_id, "prompt": "a"})


# ---- Limits -----------------------------------------------------------------------------------------


def test_limits_accept_a_job_at_the_limits() -> None:
    job = validate(
        {"messages": [{"role": "user", "content": "12345"}] * 2, "params": {"max_tokens": 100}},
        LIMITS,
    )

    assert job.messages is not None
    assert len(job.messages) == 2


def test_limits_refuse_a_long_prompt_naming_the_limit() -> None:
    with pytest.raises(ValidationError, match="prompt has 11 characters, over the limit of 10"):
        validate({"prompt": "x" * 11}, LIMITS)


def test_limits_count_the_characters_of_all_messages() -> None:
    messages = [{"role": "system", "content": "123456"}, {"role": "user", "content": "12345"}]

    with pytest.raises(ValidationError, match="prompt has 11 characters, over the limit of 10"):
        validate({"messages": messages}, LIMITS)


def test_limits_refuse_too_many_messages_naming_the_limit() -> None:
    messages = [{"role": "user", "content": "a"}] * 3

    with pytest.raises(ValidationError, match="3 messages, over the limit of 2"):
        validate({"messages": messages}, LIMITS)


def test_limits_refuse_max_tokens_over_the_limit() -> None:
    with pytest.raises(ValidationError, match=r"params\.max_tokens=101 is over the limit of 100"):
        validate({"prompt": "a", "params": {"max_tokens": 101}}, LIMITS)


def test_limits_apply_only_when_given_as_context() -> None:
    job = validate({"prompt": "x" * 11, "params": {"max_tokens": 1000}})

    assert job.params.max_tokens == 1000


# ---- fingerprint ----------------------------------------------------------------------------------------

BASE_JOB: dict[str, Any] = {
    "prompt": "Bonjour",
    "params": {"max_tokens": 16, "temperature": 0.5, "top_p": 0.9, "stop": ["\n"], "seed": 1},
}


def submission(metadata: dict[str, MetadataValue] | None = None, **changes: Any) -> JobCreate:
    return JobCreate.model_validate(BASE_JOB | {"metadata": metadata} | changes)


def digest(job: JobCreate, settings: Settings | None = None) -> str:
    """The fingerprint the store gives a submission."""
    return fingerprint(request_json(job, settings or SETTINGS).request, job.metadata)


def test_fingerprint_equal_for_equal_bodies() -> None:
    metadata: dict[str, MetadataValue] = {"a": 1, "b": "x"}

    assert digest(submission(metadata)) == digest(submission(dict(metadata)))


def test_fingerprint_ignores_the_id_and_metadata_key_order() -> None:
    first = submission({"a": 1, "b": 2}, id="x")
    assert digest(first) == digest(submission({"b": 2, "a": 1}, id="y"))


def test_fingerprint_is_of_the_job_as_it_runs_defaults_applied() -> None:
    explicit = submission(params={"max_tokens": SETTINGS.DEFAULT_MAX_TOKENS, "temperature": 0.7, "top_p": 1.0})

    assert digest(submission(params={})) == digest(explicit)
    assert digest(submission(model=None)) == digest(submission(model=SETTINGS.default_model))


def test_fingerprint_differs_with_the_model() -> None:
    two_models = make_settings(LLM_TABLE='[["m", "http://a.test"], ["other", "http://b.test"]]')

    assert digest(submission(model="m"), two_models) != digest(submission(model="other"), two_models)


@pytest.mark.parametrize(
    "changes",
    [
        {"prompt": "Bonsoir"},
        {"prompt": None, "messages": [{"role": "user", "content": "Bonjour"}]},
        {"template": "spp"},
        {"params": {"max_tokens": 17}},
        {"params": {**BASE_JOB["params"], "temperature": 0.6}},
        {"params": {**BASE_JOB["params"], "top_p": 0.8}},
        {"params": {**BASE_JOB["params"], "stop": ["\n\n"]}},
        {"params": {**BASE_JOB["params"], "stop": None}},
        {"params": {**BASE_JOB["params"], "seed": 2}},
    ],
    ids=lambda changes: ",".join(changes),
)
def test_fingerprint_differs_when_a_field_differs(changes: dict[str, Any]) -> None:
    assert digest(submission(**changes)) != digest(submission())


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"a": 1}, {"a": 2}),
        ({"a": 1}, {"b": 1}),
        ({"a": 1}, None),
        ({}, None),
        ({"a": "1"}, {"a": 1}),
    ],
)
def test_fingerprint_differs_when_metadata_differs(
    first: dict[str, MetadataValue] | None, second: dict[str, MetadataValue] | None
) -> None:
    assert digest(submission(first)) != digest(submission(second))


# ---- request_json ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"prompt": "Bonjour"},
            {"prompt": "Bonjour", "max_tokens": 512, "temperature": 0.7, "top_p": 1.0},
        ),
        (
            {"messages": [{"role": "system", "content": "Sois bref."}, {"role": "user", "content": "Bonjour"}]},
            {
                "messages": [
                    Message(role="system", content="Sois bref."),
                    Message(role="user", content="Bonjour"),
                ],
                "max_tokens": 512,
                "temperature": 0.7,
                "top_p": 1.0,
            },
        ),
        (
            {"prompt": "Bonjour", "params": {"max_tokens": 9, "temperature": 0, "top_p": 0.5, "stop": "x", "seed": 3}},
            {"prompt": "Bonjour", "max_tokens": 9, "temperature": 0.0, "top_p": 0.5, "stop": ["x"], "seed": 3},
        ),
    ],
    ids=["prompt", "messages", "params"],
)
def test_request_json_is_the_generation_request_with_defaults_applied(
    body: dict[str, Any], expected: dict[str, Any]
) -> None:
    prepared = request_json(JobCreate.model_validate(body), make_settings(DEFAULT_MAX_TOKENS=512))
    model, request = prepared.model, prepared.request

    assert model == MODEL
    assert GenerationRequest.model_validate_json(request) == GenerationRequest(model=MODEL, **expected)
    assert "null" not in request


def test_request_json_renders_the_template_as_the_user_message() -> None:
    job = JobCreate.model_validate({"prompt": "Ma carte grise n'arrive pas.", "template": "spp"})

    request = request_json(job, SETTINGS).request

    parsed = GenerationRequest.model_validate_json(request)
    assert parsed.prompt is None
    assert parsed.messages == [Message(role="user", content=render_prompt("spp", "Ma carte grise n'arrive pas."))]


# ---- public_job -------------------------------------------------------------------------------------------


def ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> str:
    """Milliseconds since the epoch of a UTC date, as Redis stores them."""
    return str(int(datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()) * 1000)


def test_public_job_of_a_finished_record() -> None:
    result = {"text": "Bonjour.", "finish_reason": "stop", "usage": {"completion_tokens": 2}}
    record = job_record(
        id="j1",
        model="m",
        status="succeeded",
        attempts="2",
        hash="abc",
        worker="w",
        created_at=str(int(ms(2024, 1, 2, 3, 4, 5)) + 7),
        started_at=str(int(ms(2024, 1, 2, 3, 4, 6)) + 123),
        finished_at=ms(2024, 1, 2, 3, 4, 7),
        result=orjson.dumps(result).decode(),
        metadata='{"k": "v", "n": 3}',
    )

    assert public_job(record) == {
        "id": "j1",
        "model": "m",
        "status": "succeeded",
        "attempts": 2,
        "created_at": "2024-01-02T03:04:05.007Z",
        "started_at": "2024-01-02T03:04:06.123Z",
        "finished_at": "2024-01-02T03:04:07.000Z",
        "result": result,
        "error": None,
        "metadata": {"k": "v", "n": 3},
        "priority": 0,
        "webhook": None,
    }


def test_public_job_of_a_failed_record_parses_the_error() -> None:
    record = job_record(
        id="j2",
        model="m",
        status="failed",
        attempts="1",
        created_at=ms(2024, 5, 6),
        error='{"type": "backend_rejected", "message": "too long"}',
    )

    job = public_job(record)

    assert job["error"] == {"type": "backend_rejected", "message": "too long"}
    assert job["result"] is None


def test_public_job_of_a_fresh_record_has_none_for_missing_fields() -> None:
    record = job_record(id="j3", model="m", status="queued", created_at=ms(2030, 12, 31, 23, 59, 59))

    assert public_job(record) == {
        "id": "j3",
        "model": "m",
        "status": "queued",
        "attempts": 0,
        "created_at": "2030-12-31T23:59:59.000Z",
        "started_at": None,
        "finished_at": None,
        "result": None,
        "error": None,
        "metadata": None,
        "priority": 0,
        "webhook": None,
    }


def test_public_job_timestamps_keep_every_millisecond() -> None:
    base = int(ms(2025, 6, 1))
    stamps = [public_job(job_record(id="j", model="m", status="queued", created_at=str(base + n))) for n in range(1000)]

    assert [stamp["created_at"][-5:] for stamp in stamps] == [f".{n:03d}Z" for n in range(1000)]
