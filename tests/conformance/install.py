"""Cached virtual environments and cmake builds for the conformance suite's real model servers and its model
maker.

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
from typing import Any

#: pip's constraints on this machine cap torch to the CPU wheel on disk; never a CUDA build.
TORCH = "torch==2.13.0"
#: The build of llama.cpp uses every core of the machine (2 on a developer's machine: about 4 to 5 minutes).
BUILD_JOBS = str(os.cpu_count() or 2)

#: The oldest cmake that builds llama.cpp's server (its UI-assets script needs 3.18); without one on PATH, this
#: release comes from PyPI into a venv of the cache.
CMAKE_MINIMUM = (3, 18)
CMAKE = "cmake==3.31.10"

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


def _is_built(home: Path, wanted: dict[str, Any]) -> bool:
    """Whether `home` holds a finished build of `wanted`: its marker, written last, says so."""
    try:
        return bool(json.loads((home / _MARKER).read_text()).get("installed") == wanted)
    except (OSError, json.JSONDecodeError):
        return False


def _empty(home: Path) -> None:
    """`home` made anew, empty: what a failed or outdated build left is gone."""
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)


def _mark_built(home: Path, wanted: dict[str, Any], started: float, **facts: str) -> None:
    """The marker of a finished build of `wanted`, with how long it took (`seconds`)."""
    record = {"installed": wanted, **facts, "seconds": round(time.monotonic() - started, 1)}
    (home / _MARKER).write_text(json.dumps(record, indent=1))


def venv(name: str, requirements: Sequence[str], *, env: Mapping[str, str] | None = None) -> Path:
    """The python of the cached venv `name` holding `requirements` (pip specifiers or paths), built if missing.

    The venv is rebuilt when its requirements (or `env`) change; `name` should carry the versions, so that two
    versions live side by side. `env` is added to pip's environment (e.g. CMAKE_ARGS for a build from source).
    """
    home = cache_root() / name
    python = home / "bin" / "python"
    wanted = {"requirements": list(requirements), "env": dict(env or {}), "python": sys.version.split()[0]}
    with locked(name):
        if python.exists() and _is_built(home, wanted):
            return python
        _empty(home)
        log = home / "install.log"
        started = time.monotonic()
        # The base interpreter, not this venv's: the new venv must not see the project's packages.
        base = getattr(sys, "_base_executable", sys.executable)
        _run([base, "-m", "venv", str(home)], log=log)
        _run([str(python), "-m", "pip", "install", "--upgrade", "pip"], log=log)
        pip_env = {"CMAKE_BUILD_PARALLEL_LEVEL": BUILD_JOBS, **(env or {})}
        _run([str(python), "-m", "pip", "install", *requirements], log=log, env=pip_env)
        _mark_built(home, wanted, started)
    return python


def _cmake_version(cmake: str) -> tuple[int, ...]:
    """(major, minor) of `cmake`, from its first words "cmake version 3.25.1"; () when it does not run."""
    try:
        words = subprocess.run([cmake, "--version"], capture_output=True, text=True, check=True).stdout.split()
        return tuple(int(part) for part in words[2].split(".")[:2])
    except (OSError, subprocess.CalledProcessError, IndexError, ValueError):
        return ()


def cmake() -> Path:
    """A cmake of at least CMAKE_MINIMUM: the one on PATH, else CMAKE installed into a cached venv."""
    found = shutil.which("cmake")
    if found is not None and _cmake_version(found) >= CMAKE_MINIMUM:
        return Path(found)
    return venv(CMAKE.replace("==", "-"), [CMAKE]).with_name("cmake")


def cmake_build(name: str, source: Path, options: Sequence[str], target: str) -> Path:
    """The build folder of the cmake `target` of `source`, configured with `options`, built once per machine.

    It lives in `<cache>/name/build`; the build is redone when `source`, `options` or `target` change. The
    marker beside it records how long the build took (`seconds`), the log is `<cache>/name/build.log`.
    """
    home = cache_root() / name
    build = home / "build"
    wanted = {"source": str(source), "options": list(options), "target": target}
    with locked(name):
        if _is_built(home, wanted):
            return build
        _empty(home)
        log = home / "build.log"
        started = time.monotonic()
        tool = str(cmake())
        _run([tool, "-S", str(source), "-B", str(build), *options], log=log)
        _run([tool, "--build", str(build), "--target", target, "-j", BUILD_JOBS], log=log)
        _mark_built(home, wanted, started, cmake=tool)
    return build


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
