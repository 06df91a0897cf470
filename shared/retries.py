"""Every retry of a call to Redis, in one place: who retries, how, and the longest a caller may wait (`POLICY`,
shown in docs/ARCHITECTURE.md, "Retries"; tests/unit/test_retries.py keeps the page and the figures in step).

A command to a Redis that accepts the connection but never answers waits without limit: the clients have no
socket timeout, since the API's stream reader blocks in XREAD on purpose; redis-py's health check (before a
command on a connection idle for 30 s) and the workers' leases are what notice it.
"""

from __future__ import annotations

REDIS_CONNECT_TIMEOUT = 2.0
"""Seconds a client waits for a connection to Redis to open."""
REDIS_COMMAND_RETRIES = 3
"""Tries of a command after its first, on a connection error or timeout."""
REDIS_BACKOFF_BASE = 0.05
REDIS_BACKOFF_CAP = 0.5
"""redis-py's ExponentialBackoff: the n-th retry waits min(cap, base × 2^n) seconds."""
POOL_WAIT_SECONDS = 10.0
"""How long a command waits for a free connection of its pool before failing."""
REDIS_PATIENCE = 30.0
"""Seconds a run keeps trying one Redis write through an outage. Past it the run gives up: its job, still
`running` but no longer heartbeated, is handed back by the sweeper once Redis answers, and generated again."""
PERSIST_FIRST_DELAY = 0.1
PERSIST_MAX_DELAY = 2.0
"""`persist` waits 0.1 s after a failure, then twice as long each time, 2 s at most."""
ARQ_CONN_RETRIES = 30
ARQ_CONN_TIMEOUT = 1.0
ARQ_CONN_RETRY_DELAY = 1.0
"""arq's `create_pool` at a worker's start: that many more tries, that far apart, each connecting within that."""


def backoff(failures: int) -> float:
    """redis-py's wait before the retry that follows `failures` failed tries."""
    return min(REDIS_BACKOFF_CAP, REDIS_BACKOFF_BASE * 2.0**failures)


def command_worst_case() -> float:
    """The longest one command can take to fail: every try's connection timing out, and the waits between."""
    waits = sum(backoff(failures) for failures in range(1, REDIS_COMMAND_RETRIES + 1))
    return (REDIS_COMMAND_RETRIES + 1) * REDIS_CONNECT_TIMEOUT + waits


def persist_worst_case() -> float:
    """The longest `persist` can take to give up: its patience, then one more command's worst case."""
    return REDIS_PATIENCE + command_worst_case()


def arq_start_worst_case() -> float:
    """The longest a worker can wait for Redis at its start before it exits."""
    return (ARQ_CONN_RETRIES + 1) * ARQ_CONN_TIMEOUT + ARQ_CONN_RETRIES * ARQ_CONN_RETRY_DELAY


POLICY: tuple[tuple[str, str, str, str], ...] = (
    (
        "a command",
        "every client (`shared/connection.py`; the shared connection of `api/multiplex.py`)",
        f"{REDIS_COMMAND_RETRIES} more tries, after "
        + ", ".join(f"{backoff(failures):g}" for failures in range(1, REDIS_COMMAND_RETRIES + 1))
        + f" s, each connecting within {REDIS_CONNECT_TIMEOUT:g} s",
        f"{command_worst_case():g} s, then the error",
    ),
    (
        "a free connection",
        "the API's and the workers' pools",
        "waits for one",
        f"{POOL_WAIT_SECONDS:g} s, then the error",
    ),
    (
        "a store write of a generation",
        "`persist` (`worker/generate.py`)",
        f"tries again after {PERSIST_FIRST_DELAY:g} s, twice as long each time, {PERSIST_MAX_DELAY:g} s at most",
        f"{REDIS_PATIENCE:g} s, plus a last command: {persist_worst_case():g} s; the sweeper then hands the job back",
    ),
    (
        "the worker's arq pool, at its start",
        "arq's `create_pool` (`worker/arq_adapter.py`)",
        f"{ARQ_CONN_RETRIES} more tries, {ARQ_CONN_RETRY_DELAY:g} s apart, "
        f"each connecting within {ARQ_CONN_TIMEOUT:g} s",
        f"{arq_start_worst_case():g} s, then the worker exits",
    ),
)
"""(path, who retries, how, worst case) of each Redis call that is retried."""


def policy_table() -> str:
    """`POLICY` as the Markdown table of docs/ARCHITECTURE.md."""
    rows = ["| path | who | how | worst case |", "| --- | --- | --- | --- |"]
    rows += [f"| {' | '.join(row)} |" for row in POLICY]
    return "\n".join(rows) + "\n"


def worst_cases_table() -> str:
    """The path and worst case of each row of `POLICY`, as the Markdown table of README.md."""
    rows = ["| Redis call retried | worst case |", "| --- | --- |"]
    rows += [f"| {path} | {worst} |" for path, _, _, worst in POLICY]
    return "\n".join(rows) + "\n"
