"""`.env.example` documents every setting with its default, then, in its "docker compose only" section, the
variables that only docker-compose.yml reads, with the defaults it gives them. Its comments are written by hand;
these tests keep its names and values true to shared/settings.py and docker-compose.yml."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared.settings import Settings
from tests.unit.test_containers import env_example, references

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_SECTION = "# ---- docker compose only ----"
# Variables of Compose itself (not interpolated in the file) that the env file may set.
COMPOSE_CLI_VARIABLES = {"COMPOSE_PROFILES", "COMPOSE_PROJECT_NAME"}
NOT_THE_DEFAULT = {
    "API_KEYS_FILE": "the example keys file (docker compose mounts API_KEYS_HOST_FILE in its place)",
    "REDIS_PASSWORD": "a placeholder: docker compose requires one (the redis service's password)",
    "WEBHOOK_SECRET_KEY": "a placeholder: docker compose requires one (staging and prod refuse to start without)",
}
"""The settings whose value in .env.example is deliberately not their default, and why."""


def _variables() -> list[str]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    return [line.split("=", 1)[0] for line in lines if line and not line.startswith("#")]


def test_env_example_lists_every_setting_once() -> None:
    names = _variables()
    assert sorted(names) == sorted(set(names)), "a variable appears twice"
    assert set(Settings.model_fields) <= set(names), f"settings missing: {set(Settings.model_fields) - set(names)}"


def test_env_example_other_variables_are_compose_only_and_used() -> None:
    text = (ROOT / ".env.example").read_text()
    assert text.count(COMPOSE_SECTION) == 1, f"one {COMPOSE_SECTION!r} section"
    _, compose_part = text.split(COMPOSE_SECTION)
    in_section = {line.split("=", 1)[0] for line in compose_part.splitlines() if line and not line.startswith("#")}
    others = set(_variables()) - set(Settings.model_fields)
    assert others <= in_section, f"not settings, so they belong in the compose section: {others - in_section}"
    compose = (ROOT / "docker-compose.yml").read_text()
    unused = {name for name in others - COMPOSE_CLI_VARIABLES if not re.search(r"\$\{" + name + r"\b", compose)}
    assert not unused, f"neither settings nor used by docker-compose.yml: {unused}"


def test_env_example_is_a_valid_configuration() -> None:
    settings = Settings(_env_file=ROOT / ".env.example")
    assert settings.models == ["AgentPublic/fabrique-reference-2"]


def test_env_example_shows_each_settings_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each setting of .env.example, parsed as the processes parse it, equals the default of shared/settings.py,
    but NOT_THE_DEFAULT's: a default changed in one place and not the other fails here."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)
    example, defaults = Settings(_env_file=ROOT / ".env.example"), Settings(_env_file=None)
    differ = {
        name: (getattr(example, name), getattr(defaults, name))
        for name in Settings.model_fields
        if getattr(example, name) != getattr(defaults, name)
    }
    assert set(differ) == set(NOT_THE_DEFAULT), f".env.example value, default: {differ}"


def test_env_example_shows_docker_composes_defaults() -> None:
    """A variable that docker-compose.yml defaults (`${NAME:-default}`) has that value in .env.example, or none
    (empty: compose's default)."""
    values = env_example()
    for ref in references((ROOT / "docker-compose.yml").read_text()):
        if ref.op == ":-" and values.get(ref.name):
            assert values[ref.name] == ref.argument, (
                f"{ref.name}: .env.example {values[ref.name]!r}, compose {ref.argument!r}"
            )
