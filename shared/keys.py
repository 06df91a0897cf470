"""Every Redis key, channel and stream albert-spp uses, named in one place.

A job is addressed by its *key id*: `<owner>:<job id>`, so that two clients may use the same job id;
the owner is a digest naming the client (api/auth.py), never its key.
"""

from __future__ import annotations

import hashlib
import random

import orjson

PREFIX = "spp"

# arq's own keys for a job (arq/constants.py); the worker that takes a job writes its definition itself.
ARQ_JOB = "arq:job:"
ARQ_IN_PROGRESS = "arq:in-progress:"
ARQ_RETRY = "arq:retry:"


def key_id(owner: str, job_id: str) -> str:
    """The job's identifier inside Redis and arq: owner-scoped."""
    return f"{owner}:{job_id}"


def split_key_id(kid: str) -> tuple[str, str]:
    """Inverse of `key_id`: owners never contain ':'."""
    owner, _, job_id = kid.partition(":")
    return owner, job_id


def arq_id(kid: str) -> str:
    """A fresh arq job id for one submission of job `kid`.

    Not the key id itself: a job replaced by a resubmission must not share arq's keys (definition,
    in-progress, retry) with the generation it replaces, which arq is still finishing.
    """
    return f"{kid}#{random.getrandbits(48):012x}"


def kid_of_arq_id(arq_id: str) -> str:
    """Inverse of `arq_id`: the key id before its last "#"."""
    return arq_id.rpartition("#")[0]


_UUID4_CLEAR = ~((0xF << 76) | (0x3 << 62))
_UUID4_SET = (0x4 << 76) | (0x2 << 62)
"""The version (4) and variant (RFC 4122) bits of a UUID: cleared, then set."""


def new_job_id() -> str:
    """The id of a job submitted without one: a random UUID (version 4).

    Drawn from Python's generator (seeded from os.urandom, and again in a forked child) rather than by
    `uuid.uuid4()`, which reads os.urandom on every call: a system call, 18 % of the API's time for an array
    of 1,000 jobs (with `arq_id`); and formatted by hand, in half the time of `str(uuid.UUID(...))`. Ids must
    be unique, not secret: a job is reached only with its owner's key.
    """
    bits = random.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET
    digits = f"{bits:032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def job(kid: str) -> str:
    """Hash: the job's record, the truth for its status, result and attempts."""
    return f"{PREFIX}:job:{kid}"


def stream(kid: str) -> str:
    """Stream: the job's token chunks, resets and final event."""
    return f"{PREFIX}:stream:{kid}"


def arq_job(arq_id: str) -> str:
    return ARQ_JOB + arq_id


def arq_in_progress(arq_id: str) -> str:
    return ARQ_IN_PROGRESS + arq_id


def arq_retry(arq_id: str) -> str:
    return ARQ_RETRY + arq_id


def queue(model: str) -> str:
    """Sorted set: arq's queue of one model (job key ids scored by the time they may run)."""
    return f"{PREFIX}:queue:{model}"


def running(model: str) -> str:
    """Sorted set: key ids of the model's running jobs, scored by their heartbeat deadline (ms)."""
    return f"{PREFIX}:running:{model}"


def workers(model: str) -> str:
    """Sorted set: worker ids of the model, scored by their last heartbeat (ms)."""
    return f"{PREFIX}:workers:{model}"


def rate(owner: str) -> str:
    """Hash: the token bucket of an API key's rate limit (api/limits.py)."""
    return f"{PREFIX}:rate:{owner}"


def auth_failures(address: str, minute: int) -> str:
    """Counter: the failed authentications of a client address in one minute (`minute`: Unix time // 60), for
    AUTH_FAILURES_PER_MINUTE (api/limits.py); it expires after the next minute."""
    return f"{PREFIX}:authfail:{minute}:{address}"


def activity(model: str) -> str:
    """Stream: one entry per finished job of the model (status, queue and run times, error), capped."""
    return f"{PREFIX}:activity:{model}"


def wake_channel(model: str) -> str:
    """Pub/sub channel: 'a job was queued' news that wakes idle workers of the model."""
    return f"{PREFIX}:wake:{model}"


def cancel_channel(model: str) -> str:
    """Pub/sub channel: key ids of running jobs just cancelled, for the worker that runs them."""
    return f"{PREFIX}:cancel:{model}"


def file(owner: str, file_id: str) -> str:
    """Hash: an uploaded file's metadata (filename, purpose, bytes, lines, created_at)."""
    return f"{PREFIX}:file:{owner}:{file_id}"


def file_data(owner: str, file_id: str) -> str:
    """String: an uploaded file's bytes."""
    return f"{PREFIX}:file-data:{owner}:{file_id}"


def file_upload(owner: str, upload_id: str) -> str:
    """String: the bytes of an upload in progress, renamed to `file_data` once it is complete."""
    return f"{PREFIX}:file-upload:{owner}:{upload_id}"


def batch(owner: str, batch_id: str) -> str:
    """Hash: a batch's state, counters (kept by the job scripts through a job record's `batch` field) and times."""
    return f"{PREFIX}:batch:{owner}:{batch_id}"


def batches(owner: str) -> str:
    """Sorted set: the owner's batch ids scored by creation time (µs), for listing."""
    return f"{PREFIX}:batches:{owner}"


def active_batches() -> str:
    """Sorted set: `<owner>:<batch id>` of batches that may still expire, scored by when they do (ms), then by the end
    of the claim of the API process expiring them (batch_claim.lua)."""
    return f"{PREFIX}:batches-active"


# ---- fair share and client limits (shared/lua/submit.lua, take.lua) ------------------------------


def virtual_clock(model: str) -> str:
    """Hash: the virtual time of the model's fair queue, a field per tier (`interactive`, `batch`): the tag of
    the last job a worker took. A client that had nothing queued starts from it."""
    return f"{PREFIX}:vclock:{model}"


def virtual_finish(model: str) -> str:
    """Hash: `<tier>:<owner>` → the virtual time at which the client's jobs queued on the model so far end: the
    tag of its next job, unless the clock has passed it."""
    return f"{PREFIX}:vfinish:{model}"


def client(owner: str) -> str:
    """Hash: what the scripts need of a client's policy (`max_running`, written at each submission), and when its
    set of unfinished jobs was last checked (`healed`)."""
    return f"{PREFIX}:client:{owner}"


def client_jobs(owner: str) -> str:
    """Sorted set: key ids of the client's unfinished interactive jobs (all models), scored by creation (ms): its
    `max_queued_jobs` usage."""
    return f"{PREFIX}:client-jobs:{owner}"


def client_queue(model: str, owner: str) -> str:
    """Sorted set: arq job ids of the client's queued interactive jobs on the model, best first: the highest
    priority, then the earliest fair-share tag. Whichever of the client's jobs comes first in the model's queue,
    a worker runs the best of these in its place (take.lua)."""
    return f"{PREFIX}:client-queue:{model}:{owner}"


def tokens(owner: str, day: str) -> str:
    """String: tokens the client reserved (settled with the real usage) on a UTC day (YYYYMMDD)."""
    return f"{PREFIX}:tokens:{owner}:{day}"


# ---- a client's uploads, batches and stored bytes (api/files.py, api/batches.py, api/stored.py) -----------


def uploads(owner: str) -> str:
    """Sorted set: ids of the client's uploads in progress, scored by the end of their lease (ms), which the upload
    renews while it runs: its `max_uploads` usage. The lease of a process that died ends by itself."""
    return f"{PREFIX}:uploads:{owner}"


def client_batches(owner: str) -> str:
    """Sorted set: ids of the client's unfinished batches, scored by their `expires_at` (ms): its
    `max_active_batches` usage. A batch leaves it as it ends (batch_end.lua); one past its time no longer counts."""
    return f"{PREFIX}:client-batches:{owner}"


def stored(owner: str) -> str:
    """Hash: the bytes the client keeps stored (files, batches, job metadata), a field per hour in which they expire
    (ms since the epoch // 3,600,000): its `max_stored_bytes` usage is the sum of the hours not ended yet. Kept until
    its last hour ends (api/stored.py)."""
    return f"{PREFIX}:stored:{owner}"


def stream_leases(owner: str) -> str:
    """Sorted set: leases on the client's open event streams, of every API process, scored by when each expires
    (ms) unless its process refreshes it: the client's `max_streams` usage (api/leases.py)."""
    return f"{PREFIX}:stream-leases:{owner}"


# ---- jobs as a resource: listing, counts, expiry (shared/lua/index.lua, list.lua, reap.lua) -----------------------


def index_prefix(owner: str) -> str:
    """The prefix of a client's job indexes, `<prefix>:<scope>:<status>` (see `index`); of every client's, the scripts'
    argument, for "" (the owner follows)."""
    return f"{PREFIX}:idx:{owner}"


def index(owner: str, scope: str, status: str) -> str:
    """Sorted set: ids of the client's jobs of one scope in one status, scored by their rank (creation time in ms ×
    1024 plus their place in the submission: `api.jobs.RANK_SLOTS`), newest last. Scopes: `model:<model>` (every job),
    `batch:<batch id>` and `meta:<digest of a metadata pair>` (`metadata_scope`). A job is in one status set
    of each of its scopes; it moves between them as its status changes, and leaves them when it is erased or
    reaped. Listing reads these (newest first), counting is their ZCARD."""
    return f"{index_prefix(owner)}:{scope}:{status}"


def model_scope(model: str) -> str:
    """The index scope of a client's jobs of `model`: every job is in one."""
    return f"model:{model}"


def batch_scope(batch_id: str) -> str:
    """The index scope of a batch's jobs."""
    return f"batch:{batch_id}"


def metadata_text(value: object) -> str:
    """A metadata value as `metadata.<key>=<value>` filters match it: a string as it is, anything else as JSON
    (`3`, `1.5`, `true`, `null`)."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return repr(value) if isinstance(value, int) else orjson.dumps(value).decode()


def metadata_scope(key: str, value: object) -> str:
    """The index scope of a client's jobs whose metadata has `key` = `value` (as `metadata_text`): a digest, so that
    any key and value (spaces, colons, 512 characters) make a short name without separators."""
    digest = hashlib.sha256(f"{key}\0{metadata_text(value)}".encode()).hexdigest()[:24]
    return f"meta:{digest}"


def expiring() -> str:
    """Sorted set: key ids of finished jobs, scored by when they expire (ms): RESULT_TTL after their end. The
    reaper (worker/sweeper.py, reap.lua) erases them then, index entries included; their records' own TTL, a day
    later, is the safety net of a deployment that runs no worker."""
    return f"{PREFIX}:expiring"


def webhook_events() -> str:
    """Stream: ends of jobs (and batches) that have a webhook, for the delivery process (`python -m webhooks`):
    fields `k` (key id) or `b` (batch key), `e` (the event), `t` (ms)."""
    return f"{PREFIX}:webhook-events"


# ---- webhook deliveries (webhooks/, shared/lua/webhook_outcome.lua, webhook_take.lua) ---------------------------


def webhook_retries() -> str:
    """Sorted set: ids (`webhook-id`) of webhook events waiting for their next delivery attempt, scored by when it
    is due (ms); an event a delivery process has taken is scored by the end of its lease instead, so that it comes
    back if that process dies."""
    return f"{PREFIX}:webhook-retries"


def webhook_pending() -> str:
    """Hash: the state of each event of `webhook_retries` (JSON: its job or batch, event, time, attempts so far and
    first attempt), removed with it once the event is delivered or given up."""
    return f"{PREFIX}:webhook-pending"


def webhook_consumers() -> str:
    """Sorted set: the delivery processes (their consumer name in the events stream's group, `<hostname>:<pid>`),
    scored by their last heartbeat (ms): their health check."""
    return f"{PREFIX}:webhook-consumers"


def webhook_stats() -> str:
    """Hash: counters of the delivery processes since the data began (`delivered`, `failed_attempts`, `given_up`,
    `dropped`), for the dashboard."""
    return f"{PREFIX}:webhook-stats"
