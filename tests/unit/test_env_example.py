"""`.env.example` documents every setting, and only settings."""

from __future__ import annotations

from pathlib import Path

from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _variables() -> list[str]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    return [line.split("=", 1)[0] for line in lines if line and not line.startswith("#")]


def test_env_example_lists_every_setting_once() -> None:
    names = _variables()
    assert sorted(names) == sorted(set(names)), "a variable appears twice"
    assert set(names) == set(Settings.model_fields)


def test_env_example_is_a_valid_configuration() -> None:
    settings = Settings(_env_file=ROOT / ".env.example")
    assert settings.models == ["AgentPublic/fabrique-reference-2"]
