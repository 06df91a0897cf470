"""`.env.example` documents every setting, then, in its "docker compose only" section, the variables that only
docker-compose.yml reads."""

from __future__ import annotations

import re
from pathlib import Path

from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_SECTION = "# ---- docker compose only ----"
# Variables of Compose itself (not interpolated in the file) that the env file may set.
COMPOSE_CLI_VARIABLES = {"COMPOSE_PROFILES", "COMPOSE_PROJECT_NAME"}


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
