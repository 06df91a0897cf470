"""Settings: the LLM_TABLE syntax, the Redis URL, and the checks on the other variables."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.settings import DEFAULT_LLM_TABLE, Backend, Settings, parse_llm_table, reference
from tests.unit.conftest import make_settings

pytestmark = pytest.mark.usefixtures("clean_env")


# ---- LLM_TABLE ------------------------------------------------------------------------------------


def test_llm_table_python_literal_of_tuples() -> None:
    settings = make_settings(LLM_TABLE='[("model-a", "http://a:8000"), ("model-b", "https://b")]')

    assert [
        Backend(model="model-a", url="http://a:8000", protocol="openai"),
        Backend(model="model-b", url="https://b", protocol="openai"),
    ] == settings.LLM_TABLE
    assert settings.models == ["model-a", "model-b"]
    assert settings.default_model == "model-a"


def test_llm_table_json_list_of_lists() -> None:
    settings = make_settings(LLM_TABLE='[["model-a", "http://a:8000"]]')

    assert [Backend(model="model-a", url="http://a:8000")] == settings.LLM_TABLE


def test_llm_table_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_TABLE", '[("model-env", "http://env:1234/v1")]')

    settings = Settings(_env_file=None)

    assert [Backend(model="model-env", url="http://env:1234")] == settings.LLM_TABLE


@pytest.mark.parametrize(
    ("url", "root"),
    [
        ("http://host:8000/v1", "http://host:8000"),
        ("http://host:8000/v1/", "http://host:8000"),
        ("http://host:8000/", "http://host:8000"),
        ("https://host/api/v1", "https://host/api"),
        ("http://host:8000", "http://host:8000"),
    ],
)
def test_llm_table_strips_trailing_v1_and_slash(url: str, root: str) -> None:
    assert parse_llm_table(f'[("m", "{url}")]') == [Backend(model="m", url=root)]


def test_llm_table_replicas_are_grouped_by_backends_for() -> None:
    settings = make_settings(
        LLM_TABLE='[("m1", "http://a"), ("m2", "http://b"), ("m1", "http://c/v1"), ("m1", "http://d", "generate")]'
    )

    assert settings.models == ["m1", "m2"]
    assert settings.backends_for("m1") == [
        Backend(model="m1", url="http://a"),
        Backend(model="m1", url="http://c"),
        Backend(model="m1", url="http://d", protocol="generate"),
    ]
    assert settings.backends_for("m2") == [Backend(model="m2", url="http://b")]
    assert settings.backends_for("unknown") == []


def test_llm_table_third_element_generate_selects_the_legacy_protocol() -> None:
    (backend,) = parse_llm_table('[("old", "http://old:8080", "generate")]')

    assert backend.protocol == "generate"
    assert backend.url == "http://old:8080"


def test_llm_table_options_give_an_entry_its_own_key_and_protocol() -> None:
    table = parse_llm_table(
        '[("a", "http://a"), ("b", "https://b/v1", {"api_key": "sk-b"}), ("c", "http://c", {"protocol": "generate"})]'
    )

    assert [(b.model, b.url, b.protocol, b.api_key) for b in table] == [
        ("a", "http://a", "openai", None),
        ("b", "https://b", "openai", "sk-b"),
        ("c", "http://c", "generate", None),
    ]
    assert "sk-b" not in repr(table)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('[("m", "http://a", {"key": "k"})]', "unknown options ['key']"),
        ('[("m", "http://a", {"api_key": ""})]', "api_key must be a non-empty string"),
        ('[("m", "http://a", {"protocol": "grpc"})]', "'openai' or 'generate', not 'grpc'"),
        ('[("m", "http://a", {"api_key": "sk-secret"}, 1)]', "{'api_key': '***'}"),
        ('[("m", "ftp://user:sk-secret@a")]', "'ftp://***@a'"),
    ],
)
def test_llm_table_option_errors_name_the_option_and_hide_the_key(raw: str, expected: str) -> None:
    with pytest.raises(ValueError, match="LLM_TABLE entry 0") as caught:
        parse_llm_table(raw)

    assert expected in str(caught.value)
    assert "sk-secret" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "public"),
    [
        ("http://user:secret@host:8000", "http://host:8000"),
        ("https://token@host/v1", "https://host"),
        ("http://u:p@[::1]:81", "http://[::1]:81"),
        ("http://host:8000", "http://host:8000"),
    ],
)
def test_backend_public_url_has_no_credentials(url: str, public: str) -> None:
    (backend,) = parse_llm_table(f'[("m", "{url}")]')

    assert backend.public_url == public


@pytest.mark.parametrize(
    "settings",
    [
        {"LLM_TABLE": '[("m", "http://user:pw@a", {"api_key": "k"})]'},
        {"LLM_TABLE": '[("m", "http://a"), ("m", "http://user:pw@b")]', "LLM_API_KEY": "k"},
    ],
)
def test_url_credentials_and_a_bearer_key_for_one_server_are_refused(settings: dict[str, str]) -> None:
    """Both would be an Authorization header; aiohttp refuses the request, every job would fail."""
    with pytest.raises(ValidationError, match="credentials in its URL and a bearer key"):
        make_settings(**settings)


def test_llm_api_key_is_not_shown_and_the_ca_bundle_must_exist(tmp_path: Path) -> None:
    assert "sk-all" not in repr(make_settings(LLM_API_KEY="sk-all"))
    with pytest.raises(ValidationError, match=r"LLM_CA_BUNDLE=.*is not a readable file"):
        make_settings(LLM_CA_BUNDLE=str(tmp_path / "missing.pem"))


@pytest.mark.parametrize("raw", ["", "   "])
def test_llm_table_empty_string_means_the_default_table(raw: str) -> None:
    settings = make_settings(LLM_TABLE=raw)

    assert parse_llm_table(DEFAULT_LLM_TABLE) == settings.LLM_TABLE
    assert settings.LLM_TABLE == Settings(_env_file=None).LLM_TABLE


def test_llm_table_empty_environment_variable_means_the_default_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_TABLE", "")

    assert parse_llm_table(DEFAULT_LLM_TABLE) == Settings(_env_file=None).LLM_TABLE


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param('[("m", "ftp://host")]', "'ftp://host'", id="bad-scheme"),
        pytest.param('[("m", "host:8000")]', "'host:8000'", id="no-scheme"),
        pytest.param('[("m",)]', "('m',)", id="one-element"),
        pytest.param('[("m", "http://a", "generate", "x")]', "'x'", id="four-elements"),
        pytest.param('[("m", "http://a", "grpc")]', "'grpc'", id="bad-third-element"),
        pytest.param('[("", "http://a")]', "entry 0: model name", id="empty-model"),
        pytest.param('[("m", "http://a"), "m2"]', "entry 1", id="entry-not-a-tuple"),
    ],
)
def test_llm_table_bad_entry_error_names_llm_table_and_the_entry(raw: str, expected: str) -> None:
    with pytest.raises(ValidationError) as info:
        make_settings(LLM_TABLE=raw)

    message = str(info.value)
    assert "LLM_TABLE" in message
    assert expected in message


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param('{"m": "http://a"}', id="json-object"),
        pytest.param('"http://a"', id="json-string"),
        pytest.param("[]", id="empty-list"),
        pytest.param("42", id="number"),
    ],
)
def test_llm_table_not_a_list_is_refused(raw: str) -> None:
    with pytest.raises(ValidationError, match="LLM_TABLE must be a non-empty list"):
        make_settings(LLM_TABLE=raw)


@pytest.mark.parametrize("raw", ["model-a=http://a", "[('m', 'http://a')", "[(m, http://a)]"])
def test_llm_table_garbage_is_refused_naming_llm_table(raw: str) -> None:
    with pytest.raises(ValidationError, match="LLM_TABLE is neither a Python literal nor JSON"):
        make_settings(LLM_TABLE=raw)


@pytest.mark.parametrize("raw", ["{[]: 1}", "{[], []}"])
def test_llm_table_unhashable_literal_garbage_is_a_validation_error(raw: str) -> None:
    with pytest.raises(ValidationError, match="LLM_TABLE"):
        make_settings(LLM_TABLE=raw)


# ---- Redis URL ------------------------------------------------------------------------------------


def test_redis_url_built_from_host_port_and_db() -> None:
    settings = make_settings(REDIS_HOST="redis.internal", REDIS_PORT=6380, REDIS_DB=2)

    assert settings.redis_url == "redis://redis.internal:6380/2"


def test_redis_url_quotes_the_password() -> None:
    settings = make_settings(REDIS_HOST="r", REDIS_PORT=6379, REDIS_PASSWORD="p@ss:w/rd#1%")

    assert settings.redis_url == "redis://:p%40ss%3Aw%2Frd%231%25@r:6379/0"


def test_redis_url_from_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_HOST", "cache")
    monkeypatch.setenv("REDIS_PORT", "7000")
    monkeypatch.setenv("REDIS_PASSWORD", "secret")

    assert Settings(_env_file=None).redis_url == "redis://:secret@cache:7000/0"


def test_redis_url_setting_wins_and_keeps_rediss_scheme() -> None:
    settings = make_settings(
        REDIS_URL="rediss://:pw@managed.example:6380/1", REDIS_HOST="ignored", REDIS_PASSWORD="ignored"
    )

    assert settings.redis_url == "rediss://:pw@managed.example:6380/1"


# ---- other checks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("env", ["unittest", "dev", "staging", "prod"])
def test_env_accepts_the_four_deployments(env: str) -> None:
    assert env == make_settings(ENV=env, API_KEYS="k" * 32).ENV


@pytest.mark.parametrize("env", ["staging", "prod"])
def test_staging_and_prod_refuse_to_start_without_keys(env: str) -> None:
    with pytest.raises(ValidationError, match=f"ENV={env} needs API keys"):
        make_settings(ENV=env)


def test_a_missing_keys_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"API_KEYS_FILE=.*nope\.json"):
        make_settings(API_KEYS_FILE=str(tmp_path / "nope.json"))


@pytest.mark.parametrize("env", ["test", "production", "PROD", ""])
def test_env_refuses_anything_else(env: str) -> None:
    with pytest.raises(ValidationError, match="ENV"):
        make_settings(ENV=env)


def test_stream_ttl_is_clamped_to_result_ttl() -> None:
    settings = make_settings(RESULT_TTL=60, STREAM_TTL=3600)

    assert settings.STREAM_TTL == 60
    assert settings.RESULT_TTL == 60


def test_stream_ttl_below_result_ttl_is_kept() -> None:
    assert make_settings(RESULT_TTL=600, STREAM_TTL=30).STREAM_TTL == 30


def test_dotenv_file_is_read_unless_disabled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("STREAM_FLUSH_MS=7\n")
    monkeypatch.chdir(tmp_path)

    assert Settings().STREAM_FLUSH_MS == 7
    assert Settings(_env_file=None).STREAM_FLUSH_MS == 100


def test_the_configuration_reference_is_made_from_the_settings() -> None:
    """docs/CONFIGURATION.md is `python -m shared.settings`'s output: one place for what a setting means."""
    written = (Path(__file__).resolve().parents[2] / "docs" / "CONFIGURATION.md").read_text()
    assert written == reference(), "docs/CONFIGURATION.md is stale: run make docs"
    for name, field in Settings.model_fields.items():
        assert field.description, f"{name} has no description"
        assert f"| `{name}` |" in written
