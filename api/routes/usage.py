"""The caller's own policy and what it uses of it: what a platform checks before a large submission."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import CallerDep, FilesDep, StoreDep
from api.jobs import utc_day
from shared import keys
from shared.models import now_ms
from shared.policy import ClientPolicy

router = APIRouter(prefix="/v1/usage", tags=["usage"])


class ClientUsage(BaseModel):
    """Each figure is counted against the policy field of the same meaning."""

    queued_jobs: int = Field(description="Interactive jobs queued or running, all models (max_queued_jobs).")
    tokens_today: int = Field(description="Tokens reserved or used this UTC day (tokens_per_day).")
    active_batches: int = Field(description="Unfinished batches (max_active_batches).")
    stored_bytes: int = Field(description="Bytes of files, batches and job metadata kept (max_stored_bytes).")
    streams: int = Field(description="Event streams open, on every API process (max_streams).")
    uploads: int = Field(description="File uploads in progress (max_uploads).")


class UsagePublic(BaseModel):
    client: str = Field(description="The client's name in API_KEYS_FILE.")
    policy: ClientPolicy = Field(description="Its limits (0: unlimited) and its weight; see docs/API.md, Clients.")
    usage: ClientUsage


@router.get("")
async def client_usage(caller: CallerDep, store: StoreDep, files: FilesDep) -> UsagePublic:
    """The caller's policy and its usage now, in one Redis round trip (and the stored bytes' script)."""
    owner, now = caller.owner, now_ms()
    async with store.redis.pipeline(transaction=False) as pipe:
        pipe.zcard(keys.client_jobs(owner))
        pipe.get(keys.tokens(owner, utc_day(now)))
        pipe.zcount(keys.client_batches(owner), now, "+inf")
        pipe.zcount(keys.stream_leases(owner), now, "+inf")
        pipe.zcount(keys.uploads(owner), now, "+inf")
        queued, tokens, batches, streams, uploads = await pipe.execute()
    usage = ClientUsage(
        queued_jobs=queued,
        tokens_today=int(tokens or 0),
        active_batches=batches,
        stored_bytes=await files.stored.usage(owner),
        streams=streams,
        uploads=uploads,
    )
    return UsagePublic(client=caller.name, policy=caller.policy, usage=usage)
