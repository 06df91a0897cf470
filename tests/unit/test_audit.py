"""Known vulnerabilities of every locked package: pip-audit on requirements/*.lock against PyPI's advisories (its
JSON API), in `make test` and `make audit`. A vulnerability fails. A service that cannot be reached, or that knows
none of the packages (a mirror without PyPI's JSON API answers 404 for each), audits nothing: the test is then
skipped, its reason saying so (`pytest -rs` shows it), rather than passing silently or failing for the network."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCKS = sorted((ROOT / "requirements").glob("*.lock"))
TIMEOUT = 10
"""Seconds pip-audit waits for each answer: a service that does not answer costs one of them, not the suite."""
UNREACHABLE = re.compile(
    r"ConnectionError|ConnectTimeout|ReadTimeout|NameResolutionError|Max retries exceeded|ProxyError|SSLError"
    r"|network may be blocking|ServiceError"
)
"""What pip-audit (2.x) writes when it cannot query its service: its own message for a connection timeout, or the
traceback of requests' exception (a name that does not resolve, a refused connection, an HTTP error other than 404)."""


@dataclass(frozen=True)
class Verdict:
    audited: int
    vulnerable: list[str]  # "name version: id (fixed in ...)" per vulnerability
    not_audited: str | None  # why nothing, or not everything, was audited


def verdict(returncode: int, stdout: str, stderr: str) -> Verdict:
    """What one pip-audit run in JSON format says. Raises AssertionError for a failure that is not the service's
    (a lock that does not parse, a bad argument)."""
    try:
        report = json.loads(stdout)
    except json.JSONDecodeError:
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert UNREACHABLE.search(stderr), f"pip-audit failed (exit {returncode}):\n{stderr}"
        return Verdict(0, [], f"pip-audit could not query its vulnerability service: {lines[-1] if lines else ''}")
    dependencies = report["dependencies"]
    skipped = [item for item in dependencies if "skip_reason" in item]
    vulnerable = [
        f"{item['name']} {item['version']}: {vuln['id']} (fixed in {', '.join(vuln['fix_versions']) or 'none yet'})"
        for item in dependencies
        for vuln in item.get("vulns", [])
    ]
    not_audited = None
    if skipped:
        not_audited = f"{len(skipped)} of {len(dependencies)} packages not audited, e.g. {skipped[0]['skip_reason']}"
    return Verdict(len(dependencies) - len(skipped), vulnerable, not_audited)


def test_no_locked_package_has_a_known_vulnerability() -> None:
    requirements = [argument for lock in LOCKS for argument in ("--requirement", str(lock))]
    options = ["--format", "json", "--progress-spinner", "off", "--timeout", str(TIMEOUT)]
    result = subprocess.run(
        [sys.executable, "-m", "pip_audit", "--disable-pip", "--require-hashes", *requirements, *options],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    found = verdict(result.returncode, result.stdout, result.stderr)
    assert not found.vulnerable, "known vulnerabilities (raise the floor in pyproject.toml, then make lock):\n" + (
        "\n".join(found.vulnerable)
    )
    if found.not_audited and found.audited == 0:
        pytest.skip(f"nothing audited, {found.not_audited}")
    assert found.not_audited is None, f"a partial audit: {found.not_audited}"


# ---- the verdict on pip-audit's outputs (pip-audit 2.10, `--format json`) ---------------------------------------


def test_a_vulnerability_is_reported_with_its_fix() -> None:
    report = {
        "dependencies": [
            {"name": "h11", "version": "0.14.0", "vulns": [{"id": "GHSA-vqfr-h8mv-ghfj", "fix_versions": ["0.16.0"]}]},
            {"name": "orjson", "version": "3.13.0", "vulns": []},
        ],
        "fixes": [],
    }
    found = verdict(1, json.dumps(report), "Found 1 known vulnerability in 1 package\n")
    assert found.vulnerable == ["h11 0.14.0: GHSA-vqfr-h8mv-ghfj (fixed in 0.16.0)"]
    assert (found.audited, found.not_audited) == (2, None)


def test_packages_unknown_to_the_service_are_not_audited() -> None:
    reason = "Dependency not found on PyPI and could not be audited: h11 (0.16.0)"
    report = {"dependencies": [{"name": "h11", "skip_reason": reason}], "fixes": []}
    found = verdict(0, json.dumps(report), "No known vulnerabilities found\n")
    assert (found.audited, found.vulnerable) == (0, [])
    assert found.not_audited is not None
    assert reason in found.not_audited


def test_an_unreachable_service_is_not_a_vulnerability_but_a_broken_lock_fails() -> None:
    traceback = (
        "Traceback (most recent call last):\n"
        "requests.exceptions.ConnectionError: HTTPSConnectionPool(host='pypi.org', port=443): Max retries exceeded\n"
    )
    found = verdict(1, "", traceback)
    assert (found.audited, found.vulnerable) == (0, [])
    assert found.not_audited is not None
    assert "Max retries exceeded" in found.not_audited
    with pytest.raises(AssertionError, match="pip-audit failed"):
        verdict(1, "", "ERROR:pip_audit._cli:invalid requirements input: requirements/api.lock\n")
