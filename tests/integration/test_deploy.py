"""deploy/deploy.sh against a real sshd (Debian's openssh-server) on 127.0.0.1, with a stand-in `docker` on the
"VM" that records what it is asked, and a real HTTP server as the API's /health."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import stat
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from stack.processes import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
SSHD = Path("/usr/sbin/sshd")
TOKEN = "glpat-registry-token-never-on-a-command-line"
KEYS = b'{"caf": "a-key-of-the-caf-0123456789abcdefghijklmnop"}\n'
VLLM_IMAGE_TAG = "v0.12.0@sha256:" + "ab" * 32
"""The pipeline's CI_VLLM_IMAGE_TAG: another vLLM image than compose's pin, by tag and digest."""

STAND_IN_DOCKER = """#!/usr/bin/env python3
import json, os, pathlib, sys
here = pathlib.Path(__file__).resolve().parent.parent
stdin = sys.stdin.read() if "--password-stdin" in sys.argv else ""
with open(here / "docker.log", "a") as log:
    log.write(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "stdin": stdin}) + "\\n")
if sys.argv[1:2] == ["compose"] and "up" in sys.argv and (here / "fail_up").exists():
    print("container albert-spp-staging-api-1 is unhealthy", file=sys.stderr)
    sys.exit(1)
if sys.argv[1:2] == ["compose"] and "ps" in sys.argv:
    print("NAME  STATUS")
"""


@dataclass
class Vm:
    """The sshd and what the stand-in docker saw."""

    directory: Path
    port: int
    client_key: str
    known_hosts: str

    def docker_calls(self) -> list[dict[str, Any]]:
        log = self.directory / "docker.log"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vm]:
    if not SSHD.exists():
        pytest.skip("Debian's openssh-server is not installed (.ci/run installs it)")
    if not Path("/run/sshd").is_dir():
        if os.geteuid() != 0:
            pytest.skip("sshd needs /run/sshd, which only root may make")
        Path("/run/sshd").mkdir(mode=0o755)
    directory = tmp_path_factory.mktemp("vm")
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(directory / name)], check=True)
    (directory / "authorized_keys").write_text((directory / "client_key.pub").read_text())
    bin_dir = directory / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(STAND_IN_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    port = free_port()
    config = directory / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {directory / 'host_key'}\nPidFile {directory / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {directory / 'authorized_keys'}\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
        f"SetEnv PATH={bin_dir}:/usr/local/bin:/usr/bin:/bin\n"
    )

    def listening() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    host_key = (directory / "host_key.pub").read_text().split()
    known_hosts = f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}"
    with (directory / "sshd.log").open("w") as log:
        process = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stderr=log)
        wait_until(listening, 10, "sshd", process)
        yield Vm(directory, port, (directory / "client_key").read_text(), known_hosts)
        process.terminate()
        process.wait(timeout=10)


class Health:
    """An HTTP server on 127.0.0.1 answering GET /health with `status`."""

    def __init__(self, status: int) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(status if self.path == "/health" else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def healthy() -> Iterator[Health]:
    server = Health(200)
    yield server
    server.close()


def deploy(
    vm: Vm, tmp_path: Path, api_port: int, env: str = "staging", vllm_image_tag: str = VLLM_IMAGE_TAG, **lines: str
) -> subprocess.CompletedProcess[str]:
    """Run deploy/deploy.sh as the pipeline's deploy job would, the VM's directory emptied first."""
    remote = vm.directory / "deployed"
    shutil.rmtree(remote, ignore_errors=True)
    (vm.directory / "docker.log").unlink(missing_ok=True)
    settings = {
        "ENV": env,
        "CI_DEPLOY_HOST": "127.0.0.1",
        "REDIS_PASSWORD": "a-redis-password",
        "API_PORT": str(api_port),
        "API_BIND_ADDRESS": "127.0.0.1",
        "VLLM_HF_REPO_ID": "AgentPublic/fabrique-reference-2",
        "COMPOSE_PROFILES": "gpu",
        "CI_API_IMAGE_TAG": "stale-tag-of-the-env-file",
    } | lines
    env_file = tmp_path / f"{env}.env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in settings.items()))
    keys = tmp_path / "api_keys.json"
    keys.write_bytes(KEYS)
    variables = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "CI_DEPLOY_USER": getpass.getuser(),
        "CI_DEPLOY_USER_SSH_PRIVATE_KEY": vm.client_key,
        "CI_DEPLOY_KNOWN_HOSTS": vm.known_hosts,
        "CI_DEPLOY_PORT": str(vm.port),
        "CI_DEPLOY_DIR": str(remote),
        "CI_REGISTRY_IMAGE": "registry.example.org/etalab/albert-spp",
        "CI_API_IMAGE_TAG": "1.4.2",
        "CI_VLLM_IMAGE_TAG": vllm_image_tag,
        "CI_DEPLOY_GROUP_USER": "deployer",
        "CI_DEPLOY_GROUP_TOKEN": TOKEN,
        "API_KEYS": str(keys),
        "HEALTH_TIMEOUT": "4",
    }
    return subprocess.run(
        ["bash", str(ROOT / "deploy" / "deploy.sh"), str(env_file)],
        env=variables,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def compose(project: str, *command: str) -> list[str]:
    return ["compose", "--project-name", project, "--env-file", ".env", "--profile", "gpu", *command]


def test_a_deployment_copies_its_files_logs_in_and_starts_the_services(vm: Vm, tmp_path: Path, healthy: Health) -> None:
    done = deploy(vm, tmp_path, healthy.port)
    assert done.returncode == 0, done.stderr
    assert "GET /health answers 200" in done.stdout

    remote = vm.directory / "deployed"
    assert (remote / "docker-compose.yml").read_bytes() == (ROOT / "docker-compose.yml").read_bytes()
    for secret in (".env", "api_keys.json"):
        assert stat.S_IMODE((remote / secret).stat().st_mode) == 0o600, secret
    assert (remote / "api_keys.json").read_bytes() == KEYS
    env = dict(line.split("=", 1) for line in (remote / ".env").read_text().splitlines() if "=" in line)
    assert env["ENV"] == "staging"
    assert env["REDIS_PASSWORD"] == "a-redis-password"
    assert env["CI_REGISTRY_IMAGE"] == "registry.example.org/etalab/albert-spp"
    assert env["CI_API_IMAGE_TAG"] == "1.4.2", "the pipeline's tag, not the env file's"
    assert env["CI_VLLM_IMAGE_TAG"] == VLLM_IMAGE_TAG
    assert env["API_KEYS_HOST_FILE"] == "./api_keys.json"
    assert env["COMPOSE_PROFILES"] == "gpu"
    assert (env["APP_UID"], env["APP_GID"]) == (str(os.getuid()), str(os.getgid())), "the keys file's owner"
    assert (remote / ".env").read_text().count("CI_API_IMAGE_TAG=") == 1

    calls = vm.docker_calls()
    login, pull, up = calls
    assert login["argv"] == ["login", "--username", "deployer", "--password-stdin", "registry.example.org"]
    assert login["stdin"] == TOKEN
    assert all(TOKEN not in " ".join(call["argv"]) for call in calls), "the token never on a command line"
    assert pull["argv"] == compose("albert-spp-staging", "pull")
    assert up["argv"] == compose(
        "albert-spp-staging", "up", "--detach", "--remove-orphans", "--wait", "--wait-timeout", "4"
    )
    assert Path(up["cwd"]) == remote


def test_prod_is_its_own_project(vm: Vm, tmp_path: Path, healthy: Health) -> None:
    done = deploy(vm, tmp_path, healthy.port, env="prod")
    assert done.returncode == 0, done.stderr
    assert vm.docker_calls()[-1]["argv"][:3] == ["compose", "--project-name", "albert-spp-prod"]


def test_services_that_do_not_become_healthy_fail_the_deployment(vm: Vm, tmp_path: Path, healthy: Health) -> None:
    (vm.directory / "fail_up").touch()
    try:
        done = deploy(vm, tmp_path, healthy.port)
    finally:
        (vm.directory / "fail_up").unlink()
    assert done.returncode != 0
    assert "did not all become healthy" in done.stderr
    assert "is unhealthy" in done.stderr
    diagnosis = [call["argv"][-3:] for call in vm.docker_calls()][-2:]
    assert diagnosis == [["--profile", "gpu", "ps"], ["--tail", "50", "api"]], "the state shown in the job's log"


def test_an_api_that_does_not_answer_200_fails_the_deployment(vm: Vm, tmp_path: Path) -> None:
    broken = Health(503)
    try:
        done = deploy(vm, tmp_path, broken.port)
    finally:
        broken.close()
    assert done.returncode != 0
    assert f"GET /health of the API on 127.0.0.1:{broken.port} did not answer 200 within 4s" in done.stderr


@pytest.mark.parametrize(
    ("lines", "said"),
    [
        ({"COMPOSE_PROFILES": "sim"}, "names sim: a staging deployment runs vLLM"),
        ({"ENV": "dev"}, "ENV=dev in"),
        ({"CI_DEPLOY_HOST": ""}, "CI_DEPLOY_HOST is not set"),
    ],
)
def test_a_wrong_env_file_is_refused_before_anything_is_sent(
    vm: Vm, tmp_path: Path, lines: dict[str, str], said: str
) -> None:
    done = deploy(vm, tmp_path, 1, **lines)
    assert done.returncode != 0
    assert said in done.stderr
    assert vm.docker_calls() == []
    assert not (vm.directory / "deployed").exists()


def test_a_vllm_image_without_its_digest_is_refused(vm: Vm, tmp_path: Path) -> None:
    done = deploy(vm, tmp_path, 1, vllm_image_tag="v0.11.0")
    assert done.returncode != 0
    assert "CI_VLLM_IMAGE_TAG=v0.11.0 is a tag alone: give TAG@sha256:DIGEST" in done.stderr
    assert vm.docker_calls() == []
