"""The operators' dashboard: a page that refreshes itself from `/dashboard/data`.

Per model: queue depth, running jobs, throughput and latency percentiles over the last minutes (from
the model's activity stream, written by finish.lua), live workers with their last heartbeat, recent
failures with their reasons; the batches in progress; the webhooks' deliveries; and Redis's used memory against its
maxmemory.
In dev any token sees it; in staging and prod only the clients named in DASHBOARD_CLIENTS.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import statistics
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse
from redis.client import NEVER_DECODE

from api.auth import Caller, Unauthorized
from api.deps import PUBLIC, CallerDep, SettingsDep, StoreDep
from api.deps import resources as state_of
from shared import keys
from shared.models import now_ms

router = APIRouter(prefix="/dashboard", tags=["dashboard"])

WINDOW_MS = 5 * 60_000
_RECENT = 5_000


async def _operator(caller: CallerDep, settings: SettingsDep) -> Caller:
    if not settings.open_access and caller.name not in settings.dashboard_clients:
        raise Unauthorized("this API key may not see the dashboard (DASHBOARD_CLIENTS)")
    return caller


Operator = Annotated[Caller, Depends(_operator)]


def _hashes(page: str, tag: str) -> str:
    """CSP sources allowing the inline `<tag>` blocks of `page` by the SHA-256 of their text."""
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.DOTALL)
    digests = (base64.b64encode(hashlib.sha256(block.encode()).digest()).decode() for block in blocks)
    return " ".join(f"'sha256-{digest}'" for digest in digests)


@functools.cache
def page_and_headers() -> tuple[str, dict[str, str]]:
    """The page, and its security headers: a Content-Security-Policy that allows its own inline script and style
    (by their hashes) and requests to this origin, nothing else; no framing (clickjacking), no MIME sniffing."""
    page = resources.files("api").joinpath("static/dashboard.html").read_text(encoding="utf-8")
    policy = (
        f"default-src 'none'; script-src {_hashes(page, 'script')}; style-src {_hashes(page, 'style')}; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    headers = {
        "Content-Security-Policy": policy,
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    return page, headers


@router.get("", response_class=HTMLResponse, openapi_extra=PUBLIC)
async def dashboard_page() -> HTMLResponse:
    """The dashboard page (it asks for an API key, then polls /dashboard/data)."""
    page, headers = page_and_headers()
    return HTMLResponse(page, headers=headers)


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    if len(values) == 1:
        return {"p50": values[0], "p95": values[0], "p99": values[0]}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": cuts[49], "p95": cuts[94], "p99": cuts[98]}


@router.get("/data")
async def dashboard_data(
    request: Request, settings: SettingsDep, store: StoreDep, operator: Operator
) -> dict[str, Any]:
    """Everything the dashboard shows, in one round trip to Redis per part; Redis's memory as /metrics has it
    (`used_memory`, `maxmemory` in bytes, 0: no limit)."""
    now = now_ms()
    stats = await store.model_stats(settings.models)
    async with store.redis.pipeline(transaction=False) as pipe:
        for model in settings.models:
            # Read as bytes, decoded below: an entry that is not valid UTF-8 must not fail the whole page.
            pipe.execute_command(
                "XREVRANGE", keys.activity(model), "+", str(now - WINDOW_MS), "COUNT", _RECENT, **{NEVER_DECODE: []}
            )
            pipe.zrange(keys.workers(model), 0, -1, withscores=True)
        pipe.zrange(keys.active_batches(), 0, 49)
        pipe.hgetall(keys.webhook_stats())
        pipe.zcard(keys.webhook_retries())
        pipe.xlen(keys.webhook_events())
        replies = await pipe.execute()
    webhook_counts, retrying, backlog = replies[-3:]
    replies = replies[:-3]
    models = []
    for index, model in enumerate(settings.models):
        entries, workers = _decoded(replies[2 * index]), replies[2 * index + 1]
        models.append(_model_view(model, stats[model], entries, workers, now, settings.WORKER_HEARTBEAT))
    return {
        "generated_at": now,
        "window_seconds": WINDOW_MS // 1000,
        "models": models,
        "batches": await _batches(store, replies[-1]),
        "webhooks": _webhooks_view(webhook_counts, retrying, backlog),
        "redis": await state_of(request)["metrics"].redis_memory(store.redis),
    }


def _webhooks_view(counts: dict[str, str], retrying: int, backlog: int) -> dict[str, int]:
    """The delivery processes' counters since the data began, the events waiting for a retry, and those not yet
    taken in (`backlog`: a figure that grows while no delivery process runs)."""
    return {
        **{name: int(counts.get(name, 0)) for name in ("delivered", "failed_attempts", "given_up", "dropped")},
        "retrying": retrying,
        "backlog": backlog,
    }


def _decoded(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[tuple[str, dict[str, str]]]:
    """Activity entries read as bytes, as text: invalid UTF-8 replaced (finish.lua wrote error messages cut at a
    byte count, which could split a character, until it cut on character boundaries)."""
    return [
        (
            entry_id.decode(),
            {name.decode(errors="replace"): value.decode(errors="replace") for name, value in fact.items()},
        )
        for entry_id, fact in entries
    ]


def _model_view(
    model: str, stats: dict[str, int], entries: list[Any], workers: list[Any], now: int, heartbeat: float
) -> dict[str, Any]:
    per_minute = [0] * (WINDOW_MS // 60_000)
    latencies: list[float] = []
    queue_times: list[float] = []
    failures: list[dict[str, Any]] = []
    succeeded = failed = 0
    for entry_id, fact in entries:
        at = int(entry_id.split("-")[0])
        if fact["s"] == "succeeded":
            succeeded += 1
            per_minute[min(len(per_minute) - 1, (now - at) // 60_000)] += 1
            latencies.append(float(fact["q"]) + float(fact["d"]))
            queue_times.append(float(fact["q"]))
        else:
            failed += 1
            if len(failures) < 20:
                failures.append(
                    {
                        "job": fact.get("j"),
                        "at": at,
                        "attempts": int(fact.get("a", 0)),
                        "error": fact.get("e", fact["s"]),
                    }
                )
    live_since = now - 3 * heartbeat * 1000
    return {
        "id": model,
        **stats,
        "succeeded": succeeded,
        "failed": failed,
        "per_minute": per_minute,
        "latency_ms": _percentiles(latencies),
        "queue_ms": _percentiles(queue_times),
        "workers_seen": [
            {"id": worker, "last_heartbeat_ms": now - int(score), "live": score >= live_since}
            for worker, score in workers
        ],
        "failures": failures,
    }


async def _batches(store: Any, members: list[str]) -> list[dict[str, Any]]:
    async with store.redis.pipeline(transaction=False) as pipe:
        for member in members:
            owner, batch_id = keys.split_key_id(member)
            pipe.hgetall(keys.batch(owner, batch_id))
        records = await pipe.execute()
    return [
        {
            "id": keys.split_key_id(member)[1],
            "status": record.get("status"),
            "total": int(record.get("total", 0)),
            "completed": int(record.get("completed", 0)),
            "failed": int(record.get("failed", 0)) + int(record.get("cancelled", 0)),
        }
        for member, record in zip(members, records, strict=True)
        if record.get("status") in ("validating", "in_progress", "cancelling")
    ]
