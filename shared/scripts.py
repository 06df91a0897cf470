"""The Lua scripts of shared/lua/, registered on a client (EVALSHA, re-sent after a Redis restart).

A line `--#include NAME` is replaced by shared/lua/NAME.lua: the one way scripts share a piece of
logic, since Redis scripts cannot call one another.
"""

from __future__ import annotations

import re
from importlib import resources

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

_INCLUDE = re.compile(r"^--#include (\w+)$", re.MULTILINE)


def _source(name: str) -> str:
    text = resources.files("shared").joinpath(f"lua/{name}.lua").read_text()
    return _INCLUDE.sub(lambda match: _source(match[1]), text)


def load_script(redis: Redis, name: str) -> AsyncScript:
    """shared/lua/`name`.lua, its includes expanded, registered on `redis`."""
    return redis.register_script(_source(name))
