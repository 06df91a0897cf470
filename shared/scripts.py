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


def script_source(name: str) -> str:
    """The text of shared/lua/`name`.lua as Redis runs it (its EVALSHA names the SHA1 of this), includes expanded."""
    text = resources.files("shared").joinpath(f"lua/{name}.lua").read_text()
    return _INCLUDE.sub(lambda match: script_source(match[1]), text)


def load_script(redis: Redis, name: str) -> AsyncScript:
    """shared/lua/`name`.lua, its includes expanded, registered on `redis`."""
    return redis.register_script(script_source(name))
