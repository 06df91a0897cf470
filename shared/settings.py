"""Every setting of albert-spp, read from the environment (and `.env`) in one class.

Nothing here runs at import time: call `get_settings()` (cached) or build `Settings(...)` explicitly.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

import orjson
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.templates import template_names

DEFAULT_LLM_TABLE = '[("AgentPublic/fabrique-reference-2", "http://127.0.0.1:8081")]'

Protocol = Literal["openai", "generate"]


class Backend(BaseModel, frozen=True):
    """One server of a model: its root URL (no trailing `/v1`), the protocol it speaks and, when it has a key
    of its own, the bearer key it wants (else LLM_API_KEY)."""

    model: str
    url: str
    protocol: Protocol = "openai"
    api_key: str | None = Field(None, repr=False)

    @property
    def public_url(self) -> str:
        """The URL without credentials (`http://user:secret@host` -> `http://host`): the one fit for logs."""
        parts = urlsplit(self.url)
        if parts.username is None and parts.password is None:
            return self.url
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            netloc += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))


MIN_API_KEY_LENGTH = 32
EXAMPLE_API_KEYS = frozenset({"change-me-to-a-long-random-key"})
"""The keys of api_keys.example.json (tests/unit/test_auth.py keeps them in step): refused in staging and prod."""


def strip_bearer(value: str) -> str:
    """An API key as configured (`Bearer <key>` or `<key>`): the key."""
    value = value.strip()
    return value[7:].strip() if value[:7].lower() == "bearer " else value


def weak_api_key(key: str) -> str | None:
    """Why `key` may not be a client's key in staging or prod (guessable), None when it may."""
    if key in EXAMPLE_API_KEYS:
        return "is the example's key (api_keys.example.json)"
    if len(key) < MIN_API_KEY_LENGTH:
        return f"is shorter than {MIN_API_KEY_LENGTH} characters"
    return None


_ENTRY_OPTIONS = {"protocol", "api_key"}


def parse_llm_table(raw: str) -> list[Backend]:
    """Parse `LLM_TABLE`: a Python-literal or JSON list of entries, each one of

    - `(model, url)`: the seed's form, an OpenAI-compatible server;
    - `(model, url, "generate")`: a server of vLLM's legacy `/generate`;
    - `(model, url, {"api_key": "...", "protocol": "generate"})`: options, each optional: the server's own
      bearer key (instead of LLM_API_KEY) and its protocol.

    Entries sharing a model name are replicas of that model.
    """
    text = raw.strip() or DEFAULT_LLM_TABLE  # the seed's `LLM_TABLE=""` means "the default"
    try:
        entries: Any = orjson.loads(text)
    except orjson.JSONDecodeError:
        try:
            entries = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
            raise ValueError(f"LLM_TABLE is neither a Python literal nor JSON: {exc}") from None
    if not isinstance(entries, list | tuple) or not entries:
        raise ValueError("LLM_TABLE must be a non-empty list of (model_name, model_url) tuples")
    return [_llm_table_entry(index, entry) for index, entry in enumerate(entries)]


def _shown(value: Any) -> str:
    """An LLM_TABLE entry or URL as an error message may show it: api keys and URL credentials masked."""
    if isinstance(value, dict):
        return repr({key: "***" if key == "api_key" else item for key, item in value.items()})
    if isinstance(value, list | tuple):
        return "(" + ", ".join(_shown(item) for item in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, str) and "@" in value:
        return repr(re.sub(r"//[^/@]*@", "//***@", value))
    return repr(value)


def _llm_table_entry(index: int, entry: Any) -> Backend:
    """One entry of LLM_TABLE (see parse_llm_table); errors show the entry with its secrets masked."""
    if not isinstance(entry, list | tuple) or len(entry) not in (2, 3):
        raise ValueError(
            f"LLM_TABLE entry {index} must be (model_name, model_url[, 'generate' or {{options}}]): {_shown(entry)}"
        )
    model, url, *rest = entry
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"LLM_TABLE entry {index}: model name must be a non-empty string")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(f"LLM_TABLE entry {index}: model url must start with http:// or https://: {_shown(url)}")
    options: dict[str, Any] = {}
    if rest and isinstance(rest[0], dict):
        options = rest[0]
        unknown = set(options) - _ENTRY_OPTIONS
        if unknown:
            raise ValueError(
                f"LLM_TABLE entry {index}: unknown options {sorted(unknown)}; known: {sorted(_ENTRY_OPTIONS)}"
            )
    elif rest:
        options = {"protocol": rest[0]}
    protocol = options.get("protocol", "openai")
    if protocol not in ("openai", "generate"):
        raise ValueError(f"LLM_TABLE entry {index}: the protocol must be 'openai' or 'generate', not {protocol!r}")
    api_key = options.get("api_key")
    if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
        raise ValueError(f"LLM_TABLE entry {index}: api_key must be a non-empty string")
    root = url.rstrip("/").removesuffix("/v1")
    return Backend(model=model.strip(), url=root, protocol=protocol, api_key=api_key)


class Settings(BaseSettings):
    """The one configuration class. Upper-case names are the environment variables."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=True)

    # Deployment
    ENV: Literal["unittest", "dev", "staging", "prod"] = Field(
        "dev",
        description=(
            "`unittest`, `dev`, `staging` or `prod`; `dev` and `unittest` accept any API key and only listen "
            "on a loopback `API_HOST` (see [API keys](API.md#api-keys))."
        ),
    )
    APP_VERSION: str = Field("0.1.0", description="Reported by `/health` and the OpenAPI document.")
    API_HOST: str = Field(
        "127.0.0.1", description="Address `python -m api` listens on; `dev` and `unittest` accept only a loopback one."
    )
    API_PORT: int = Field(8000, ge=1, le=65535, description="Port `python -m api` listens on.")
    API_PUBLISHED_HOST: str = Field(
        "",
        description=(
            "The only host address other machines reach the API on when `API_HOST` is a container's `0.0.0.0`: "
            "the address its port is published on (docker-compose.yml sets it to `API_BIND_ADDRESS`). `dev` and "
            "`unittest` then start only if it is a loopback one. Empty: `API_HOST` alone decides."
        ),
    )
    API_ROOT_PATH: str = Field("", description="Path prefix when served behind a proxy.")
    API_METRICS_PORT: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port of the API's /metrics, apart from the API's (on API_METRICS_HOST); 0: on API_PORT.",
    )
    API_METRICS_HOST: str = Field("127.0.0.1", description="Address of the API's /metrics with API_METRICS_PORT.")
    FORWARDED_ALLOW_IPS: str = Field(
        "127.0.0.1,::1",
        description=(
            "Reverse proxies whose `X-Forwarded-For`/`-Proto` the API trusts (`*`: any): set your proxy's "
            "address, or every client behind it shares the proxy's address, and its refusals for "
            "`AUTH_FAILURES_PER_MINUTE`."
        ),
    )
    API_DOCS: bool = Field(
        True,
        description=(
            "Serve `/docs` (Swagger UI, its assets served by the API itself: it works offline) and "
            "`/openapi.json`; `false` answers them `404` (e.g. in `prod`)."
        ),
    )
    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="`DEBUG`, `INFO`, `WARNING`, `ERROR`."
    )
    LOG_FORMAT: Literal["auto", "json", "text"] = Field(
        "auto",
        description=(
            "`json` (one object per line, job lines with `job`, `model`, `attempt`, `duration_ms`), `text`, "
            "or `auto`: text on a terminal, JSON otherwise."
        ),
    )

    # API keys: a JSON file {"client name": "key"} and/or a comma-separated list.
    API_KEYS_FILE: Path | None = Field(
        None,
        description=(
            'JSON file `{"client name": "key"}`, or `{"client name": {"key": "...", <policy>}}`, re-read when '
            "it changes (see [Clients](API.md#clients-fair-share-priorities-and-limits))."
        ),
    )
    API_KEYS: str = Field("", repr=False, description="Comma-separated keys (named `key-<digest>`).")
    RATE_LIMIT: float | None = Field(
        None, ge=0, description="Requests per second per API key; 0 disables; unset: 0 in dev/unittest, else 20."
    )
    RATE_LIMIT_BURST: int = Field(40, ge=1, description="Requests a key may send at once above its rate.")
    AUTH_FAILURES_PER_MINUTE: int = Field(
        30,
        ge=0,
        description=(
            "Failed authentications (a wrong key, not a missing one) an address may make in a minute, counted "
            "in Redis over all API processes; past it every request of the address is `429` (`Retry-After`: "
            "the minute's end) before its key is checked, so that keys cannot be guessed faster; `0` "
            "disables. The address is the peer's, or `X-Forwarded-For`'s from a proxy of "
            "`FORWARDED_ALLOW_IPS`."
        ),
    )
    API_REDIS_CONNECTIONS: int = Field(
        3,
        ge=2,
        description=(
            "Pooled Redis connections of one API process, shared by all its requests (they wait for a free "
            "one rather than fail). Reading and submitting jobs go through one more connection that "
            "concurrent requests share (commands pipelined), and SSE subscribers through one shared reader: 5 "
            "in all."
        ),
    )
    MAX_BODY_BYTES: int = Field(
        32 * 2**20, ge=1024, description="Largest request body (batch file uploads aside): `413` beyond."
    )
    BODY_IDLE_TIMEOUT: float = Field(
        30.0, gt=0, description="Seconds a request body (file uploads too) may go without a byte; beyond: 408."
    )
    BODY_READ_TIMEOUT: float = Field(
        60.0, gt=0, description="Seconds a request body (file uploads aside) may take to arrive whole; beyond: 408."
    )
    DASHBOARD_CLIENTS: str = Field(
        "",
        description=(
            "Client names (of `API_KEYS_FILE`) allowed to see `/dashboard` in `staging`/`prod` (in `dev` any token)."
        ),
    )
    CORS_ORIGINS: str = Field(
        "",
        description="Comma-separated origins allowed by CORS; `*` allows any origin, and then never with credentials.",
    )

    # Client policies: the defaults of every client; API_KEYS_FILE may set any of them per client (shared/policy.py).
    CLIENT_WEIGHT: float = Field(
        1.0,
        gt=0,
        le=1000,
        description="A client's share of each model's GPU time (tokens) against the others' with work queued.",
    )
    CLIENT_MAX_PRIORITY: int = Field(9, ge=0, le=9, description="Highest job `priority` (0-9) a client may use.")
    CLIENT_MAX_QUEUED_JOBS: int = Field(
        5_000, ge=0, description="Interactive jobs a client may have queued or running, all models; `0`: unlimited."
    )
    CLIENT_MAX_RUNNING_JOBS: int = Field(
        0, ge=0, description="Jobs of a client running at once on each model; `0`: unlimited."
    )
    CLIENT_MAX_ACTIVE_BATCHES: int = Field(10, ge=0, description="Unfinished batches of a client; `0`: unlimited.")
    CLIENT_MAX_STORED_BYTES: int = Field(
        512 * 2**20, ge=0, description="Bytes of files, batches and metadata a client keeps (512 MiB); `0`: unlimited."
    )
    CLIENT_TOKENS_PER_DAY: int = Field(
        0,
        ge=0,
        description=(
            "Tokens a client may use per UTC day (reserved at submission, settled with the real usage); `0`: unlimited."
        ),
    )
    CLIENT_MAX_STREAMS: int = Field(100, ge=0, description="Event streams a client may hold open; `0`: unlimited.")
    CLIENT_MAX_UPLOADS: int = Field(4, ge=0, description="File uploads a client may send at once; `0`: unlimited.")

    # Redis: REDIS_URL wins over REDIS_HOST/REDIS_PORT/REDIS_PASSWORD.
    REDIS_URL: str | None = Field(
        None, description="E.g. `redis://:password@host:6379/0` or `rediss://...`; wins over the next three."
    )
    REDIS_HOST: str = Field("127.0.0.1", description="Redis's host, as the seed named it; `REDIS_URL` wins.")
    REDIS_PORT: int = Field(6379, ge=1, le=65535, description="Redis's port, as the seed named it; `REDIS_URL` wins.")
    REDIS_PASSWORD: str | None = Field(None, description="Redis's password, as the seed named it; `REDIS_URL` wins.")
    REDIS_DB: int = Field(0, ge=0, description="Redis's database number; `REDIS_URL` wins.")
    REDIS_SENTINELS: str = Field(
        "", description="Comma-separated host:port of Redis Sentinels; when set, the master is found through them."
    )
    REDIS_SENTINEL_MASTER: str = Field("mymaster", description="The name of the master the Sentinels watch.")
    REDIS_MAXMEMORY: str = Field(
        "1gb",
        pattern=r"^\s*([0-9]+([kKmMgG][bB]?|[bB])?)?\s*$",
        description=(
            "`maxmemory` of the redis-server that `make run` starts and of compose's `redis` service, with "
            "`maxmemory-policy noeviction`; empty or `0`: no limit. Past it Redis refuses writes and the API "
            "answers `503` with `Retry-After` (`Redis is out of memory (maxmemory): retry later`), never "
            "drops a job; `/metrics` (`spp_redis_used_memory_bytes`, `spp_redis_maxmemory_bytes`) and the "
            "dashboard show both figures. A Redis of your own is not changed: the API logs its `maxmemory` "
            "and policy at start, and warns when the policy evicts keys."
        ),
    )

    # Models
    LLM_TABLE: Annotated[list[Backend], NoDecode] = Field(
        default_factory=lambda: parse_llm_table(DEFAULT_LLM_TABLE),
        description=(
            "Python-literal (or JSON) list of `(model_name, model_url)`; the URL is the server's root (a "
            "trailing `/v1` is accepted). Entries with the same name are replicas, used in turn. A third "
            'element `"generate"` marks a server speaking vLLM\'s legacy `/generate`; a third element '
            '`{"api_key": "...", "protocol": "generate"}` (each key optional) gives the server its own bearer '
            "key. Credentials in a URL (`http://user:pass@host`) are sent as HTTP Basic, never logged nor "
            "shown to clients; an entry has those or a bearer key (its own or `LLM_API_KEY`), not both. An "
            "empty value means the default."
        ),
    )
    SIM_PORT: int = Field(
        8081,
        ge=1,
        le=65535,
        description=(
            "Port of the vLLM simulator `make run` starts when `LLM_TABLE` is unset (or the default): its "
            "workers are pointed at it."
        ),
    )
    LLM_API_KEY: str | None = Field(
        None,
        repr=False,
        description=(
            "Bearer key sent as `Authorization: Bearer …` to every model server without a key of its own "
            "(vLLM's `--api-key`). A refused key (401/403) is retried, not stored as the job's fault."
        ),
    )
    LLM_CA_BUNDLE: Path | None = Field(
        None,
        description=(
            "PEM file of the CA(s) that sign `https://` model servers' certificates, for a private CA; "
            "without it the system's CAs are trusted."
        ),
    )
    BACKEND_TIMEOUT: float = Field(600.0, gt=0, description="Seconds one attempt may take.")
    BACKEND_CONNECT_TIMEOUT: float = Field(5.0, gt=0, description="Seconds to connect to a model server.")
    BACKEND_READ_TIMEOUT: float = Field(
        120.0, gt=0, description="Seconds of silence from a model server before the attempt is abandoned."
    )
    FIRST_TOKEN_TIMEOUT: float = Field(
        60.0,
        gt=0,
        description=(
            "Seconds from sending a request to its first token (a server that accepts requests but never starts them)."
        ),
    )
    REPLICA_MAX_FAILURES: int = Field(
        3, ge=1, description="Consecutive transient failures after which a replica is skipped for a while."
    )
    REPLICA_COOLDOWN: float = Field(
        10.0, gt=0, description="Seconds a failing replica is first skipped; doubles each time it fails again."
    )

    # Jobs
    RESULT_TTL: int = Field(
        172_800, ge=1, description="Seconds a finished job (record and keys) is kept: the old API's 48 hours."
    )
    STREAM_TTL: int = Field(
        3_600,
        ge=1,
        description=(
            "Seconds a finished job's token stream is kept (at most `RESULT_TTL`); after that, `/events` "
            "replays the whole text as one chunk."
        ),
    )
    MAX_JOBS_PER_REQUEST: int = Field(1_000, ge=1, description="Jobs in one `POST /v1/jobs` array.")
    MAX_QUEUE_DEPTH: int = Field(
        10_000,
        ge=0,
        description="Queued (or running) interactive jobs per model before `429`, batch jobs aside; `0`: unlimited.",
    )
    MAX_BATCH_QUEUE_DEPTH: int = Field(
        100_000,
        ge=0,
        description=(
            "Queued (or running) batch jobs per model, twice `BATCH_MAX_LINES`; a batch that would exceed it "
            "fails whole (`queue_full`); `0`: unlimited."
        ),
    )
    MAX_PROMPT_CHARS: int = Field(
        200_000, ge=1, description="Characters of a job's prompt, or of its messages together, at most (`422` beyond)."
    )
    MAX_MESSAGES: int = Field(256, ge=1, description="Messages of a chat job, at most (`422` beyond).")
    MAX_TOKENS_LIMIT: int = Field(
        32_768, ge=1, description="The largest `max_tokens` a job may ask for (`422` beyond)."
    )
    DEFAULT_MAX_TOKENS: int = Field(512, ge=1, description="`max_tokens` when a job gives none.")
    JOB_MAX_ATTEMPTS: int = Field(
        3,
        ge=1,
        description=(
            "Attempts of a job whose model server failed transiently (connection, 5xx, cut stream, silence); "
            "a 4xx is never retried."
        ),
    )
    RETRY_BACKOFF: float = Field(1.0, ge=0, description="First retry delay in seconds, doubling, with jitter.")
    JOB_DEADLINE: float = Field(
        3_600.0,
        gt=0,
        description=(
            "Seconds from a job's creation after which a failed attempt is not retried: the job fails with "
            "type `deadline`."
        ),
    )

    # Webhooks (`python -m webhooks`, Standard Webhooks deliveries of jobs' and batches' ends)
    WEBHOOK_SECRET_KEY: str = Field(
        "",
        repr=False,
        description=(
            "Server key every client's signing secret is derived from (HMAC-SHA256 of the client), unless its "
            "policy has `webhook_secret`; 32 characters or more, required in `staging` and `prod`. Changing "
            "it changes every derived secret."
        ),
    )
    WEBHOOK_ALLOWED_HOSTS: str = Field(
        "",
        description=(
            "Comma-separated hosts whose webhook URLs may be or resolve to private, loopback or link-local addresses."
        ),
    )
    WEBHOOK_TIMEOUT: float = Field(
        15.0, gt=0, description="Seconds one delivery attempt may take, from resolving the host to the answer."
    )
    WEBHOOK_RETRY_HOURS: float = Field(
        24.0, gt=0, description="Hours from an event's first attempt during which failed deliveries are retried."
    )
    WEBHOOK_RETRY_SCHEDULE: str = Field(
        "5,300,1800,7200,18000,36000",
        pattern=r"^\s*[0-9]+(\.[0-9]+)?(\s*,\s*[0-9]+(\.[0-9]+)?)*\s*$",
        description="Seconds before each retry, the last one repeating (Standard Webhooks' schedule).",
    )
    WEBHOOK_CONCURRENCY: int = Field(256, ge=1, description="Deliveries one delivery process sends at once.")
    WEBHOOK_CONCURRENCY_PER_CLIENT: int = Field(
        16,
        ge=1,
        description=(
            "Deliveries of one client in flight at once, so that a slow or failing receiver of one client "
            "delays no other client's."
        ),
    )
    WEBHOOK_METRICS_PORT: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port of the delivery process's Prometheus `/metrics` (on `WORKER_METRICS_HOST`); `0`: none.",
    )

    # Files and batches (the OpenAI Files and Batch API)
    BATCH_MAX_LINES: int = Field(50_000, ge=1, description="Lines in one batch input file, blank ones included.")
    BATCH_MAX_LINE_BYTES: int = Field(
        4 * 2**20,
        ge=1,
        description=(
            "Bytes of one line of a batch input file (4 MiB): above the largest valid request, "
            "`MAX_PROMPT_CHARS` characters of 4-byte UTF-8 written as JSON `\\u` escapes (12 bytes each: 2.4 "
            "MB)."
        ),
    )
    BATCH_MAX_BYTES: int = Field(200 * 2**20, ge=1, description="Bytes of one uploaded file (200 MiB): `413` beyond.")
    FILE_TTL: int | None = Field(None, ge=1, description="Seconds an uploaded file is kept.")

    # Worker
    WORKER_MAX_JOBS: int = Field(
        256,
        ge=1,
        description=(
            "Generations one worker runs at once. vLLM batches continuously: it runs up to `--max-num-seqs` "
            "sequences at once (256 by default) and queues the rest inside the engine. A worker must keep at "
            "least that many requests in flight, or the GPU idles while jobs wait in Redis. The default, 256, "
            "matches vLLM's default; with several workers per model, give each `max-num-seqs / workers` "
            "(rounded up). Not more: what waits inside vLLM's queue waits first come, first served, out of "
            "reach of the fair share between clients, of priorities and of `max_running_jobs` (measured: a "
            "one-job-at-a-time client's p50 went from 0.69 s to 13.6 s behind another client's flood with "
            "workers taking 256 jobs for a server of 64 slots, docs/PERFORMANCE.md)."
        ),
    )
    WORKER_IDLE_POLL: float = Field(
        1.0, gt=0, description="Seconds an idle worker waits for a wake-up before polling its queue anyway."
    )
    WORKER_HEARTBEAT: float = Field(
        1.0,
        gt=0,
        description=(
            "Seconds between heartbeats of a worker and its running jobs; a job not beaten for three "
            "heartbeats goes back to the queue."
        ),
    )
    WORKER_SHUTDOWN_GRACE: float = Field(
        30.0,
        ge=0,
        description=(
            "Seconds a stopping worker lets its generations finish (see "
            "[Faults](ARCHITECTURE.md#faults-nothing-lost-nothing-doubled))."
        ),
    )
    WORKER_METRICS_PORT: int = Field(9180, ge=0, le=65535, description="Port of a worker's /metrics; 0: none.")
    WORKER_METRICS_HOST: str = Field("127.0.0.1", description="Address a worker's /metrics listens on.")
    STREAM_FLUSH_MS: int = Field(
        100,
        ge=0,
        description=(
            "Token coalescing window: the first token is written at once, then at most one stream entry per "
            "window. The windows are slots of one clock for all the jobs of a worker, whose chunks of a "
            "window are written in one Redis call."
        ),
    )

    # Services Publics Plus: what the old endpoints (/anonymize) generate with
    SPP_TEMPLATE: str = Field("spp", description="The template `/anonymize` renders.")
    SPP_MAX_TOKENS: int = Field(1024, ge=1, description="`max_tokens` of the old `/anonymize` endpoint's generations.")
    SPP_TEMPERATURE: float = Field(
        0.2, ge=0, le=2, description="`temperature` of the old `/anonymize` endpoint's generations."
    )
    SPP_TOP_P: float = Field(1.0, gt=0, le=1, description="`top_p` of the old `/anonymize` endpoint's generations.")

    @field_validator(
        "API_KEYS_FILE",
        "REDIS_URL",
        "REDIS_PASSWORD",
        "RATE_LIMIT",
        "FILE_TTL",
        "LLM_API_KEY",
        "LLM_CA_BUNDLE",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("LLM_TABLE", mode="before")
    @classmethod
    def _parse_llm_table(cls, value: object) -> object:
        return parse_llm_table(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.STREAM_TTL > self.RESULT_TTL:
            self.STREAM_TTL = self.RESULT_TTL
        if self.ENV in ("staging", "prod") and not (self.API_KEYS_FILE or self.API_KEYS.strip()):
            raise ValueError(f"ENV={self.ENV} needs API keys: set API_KEYS_FILE (a JSON file) or API_KEYS")
        if self.ENV in ("staging", "prod"):
            for position, key in enumerate(self.api_keys, 1):
                reason = weak_api_key(key)
                if reason is not None:
                    raise ValueError(
                        f"ENV={self.ENV}: key {position} of API_KEYS {reason}: use keys of {MIN_API_KEY_LENGTH} "
                        "random characters or more"
                    )
        if self.ENV in ("staging", "prod") and len(self.WEBHOOK_SECRET_KEY.strip()) < 32:
            raise ValueError(
                f"ENV={self.ENV} needs WEBHOOK_SECRET_KEY: at least 32 random characters (the clients' webhook "
                "signing secrets are derived from it)"
            )
        _ = self.sentinels  # validates REDIS_SENTINELS
        for index, backend in enumerate(self.LLM_TABLE):
            if (backend.api_key or self.LLM_API_KEY) and backend.public_url != backend.url:
                # Both would be an Authorization header: HTTP has room for one.
                raise ValueError(
                    f"LLM_TABLE entry {index} has credentials in its URL and a bearer key (its api_key or "
                    "LLM_API_KEY): give the server one of them (an entry's api_key wins over LLM_API_KEY)"
                )
        if self.SPP_TEMPLATE not in template_names():
            raise ValueError(f"SPP_TEMPLATE={self.SPP_TEMPLATE!r} is not a template of shared/templates/")
        if self.API_KEYS_FILE is not None and not self.API_KEYS_FILE.is_file():
            raise ValueError(f"API_KEYS_FILE={self.API_KEYS_FILE} is not a readable file")
        if self.LLM_CA_BUNDLE is not None and not self.LLM_CA_BUNDLE.is_file():
            raise ValueError(f"LLM_CA_BUNDLE={self.LLM_CA_BUNDLE} is not a readable file")
        return self

    @property
    def worker_lease(self) -> float:
        """Seconds a heartbeat keeps a worker's running jobs: three heartbeats, so that one late beat loses
        nothing; past it, the sweeper hands the jobs back to the queue."""
        return 3 * self.WORKER_HEARTBEAT

    @property
    def in_progress_lease(self) -> float:
        """Seconds arq's in-progress key of a job is kept, from its start or its last heartbeat (arq takes
        no job whose key exists): two heartbeats past `worker_lease`, so that the sweeper hands the job of
        a dead worker back before arq would take it again under its old id."""
        return self.worker_lease + 2 * self.WORKER_HEARTBEAT

    @property
    def file_ttl(self) -> int:
        """Seconds an uploaded file is kept: FILE_TTL, or RESULT_TTL when unset."""
        return self.FILE_TTL or self.RESULT_TTL

    @property
    def rate_limit(self) -> float:
        """Requests per second per key: RATE_LIMIT, or its default for the ENV (off in dev and unittest)."""
        if self.RATE_LIMIT is not None:
            return self.RATE_LIMIT
        return 0.0 if self.open_access else 20.0

    @property
    def webhook_secret_key(self) -> str:
        """WEBHOOK_SECRET_KEY; in dev and unittest, when unset, a fixed development key (staging and prod require
        one: `_check`)."""
        return self.WEBHOOK_SECRET_KEY.strip() or "albert-spp development webhook key, not a secret"

    @property
    def webhook_allowed_hosts(self) -> frozenset[str]:
        """WEBHOOK_ALLOWED_HOSTS as host names in lower case (IPv6 addresses without brackets)."""
        hosts = (
            host.strip().lower().removeprefix("[").removesuffix("]") for host in self.WEBHOOK_ALLOWED_HOSTS.split(",")
        )
        return frozenset(host for host in hosts if host)

    @property
    def webhook_retry_delays(self) -> tuple[float, ...]:
        """WEBHOOK_RETRY_SCHEDULE in seconds: before the first retry, the second, ..., the last one repeating."""
        return tuple(float(item) for item in self.WEBHOOK_RETRY_SCHEDULE.split(","))

    @property
    def dashboard_clients(self) -> set[str]:
        return {name.strip() for name in self.DASHBOARD_CLIENTS.split(",") if name.strip()}

    @property
    def cors_origins(self) -> list[str]:
        return [origin.strip() for origin in self.CORS_ORIGINS.split(",") if origin.strip()]

    @property
    def api_keys(self) -> list[str]:
        """The keys of API_KEYS (comma-separated, each with or without `Bearer `)."""
        return [key for key in (strip_bearer(item) for item in self.API_KEYS.split(",")) if key]

    @property
    def open_access(self) -> bool:
        """In dev and unittest any bearer token is accepted, as in the seed (the header is still required). The
        API then refuses to be reachable beyond loopback (`api.main.open_access_refusal`: API_HOST, or
        API_PUBLISHED_HOST): not checked here, since the workers, which share these settings, listen on neither."""
        return self.ENV in ("dev", "unittest")

    @property
    def redis_url(self) -> str:
        """The Redis URL, built from REDIS_HOST/PORT/PASSWORD when REDIS_URL is not set."""
        if self.REDIS_URL:
            return self.REDIS_URL
        auth = f":{quote(self.REDIS_PASSWORD, safe='')}@" if self.REDIS_PASSWORD else ""
        return f"redis://{auth}{self.REDIS_HOST}:{self.REDIS_PORT}/{self.REDIS_DB}"

    @property
    def redis_maxmemory(self) -> str | None:
        """REDIS_MAXMEMORY as redis-server takes it; None for no limit (empty, or 0)."""
        value = self.REDIS_MAXMEMORY.strip().lower()
        return value if value and int(value.rstrip("kmgb")) else None

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        """REDIS_SENTINELS as (host, port) pairs; empty when Sentinel is not used."""
        pairs = []
        for item in self.REDIS_SENTINELS.split(","):
            if item.strip():
                host, _, port = item.strip().rpartition(":")
                if not host or not port.isdigit():
                    raise ValueError(f"REDIS_SENTINELS: {item.strip()!r} is not host:port")
                pairs.append((host, int(port)))
        return pairs

    @property
    def models(self) -> list[str]:
        """Model names in LLM_TABLE order, without duplicates (replicas share a name)."""
        return list(dict.fromkeys(backend.model for backend in self.LLM_TABLE))

    @property
    def default_model(self) -> str:
        """The first model of LLM_TABLE (`models[0]`, without building the list: once per submitted job)."""
        return self.LLM_TABLE[0].model

    def backends_for(self, model: str) -> list[Backend]:
        return [backend for backend in self.LLM_TABLE if backend.model == model]


@functools.cache
def get_settings() -> Settings:
    """The process's settings, read once from the environment."""
    return Settings()


def settings_or_exit() -> Settings:
    """For `python -m ...` entry points: the settings, or exit with one line per wrong variable."""
    try:
        return get_settings()
    except ValidationError as exc:
        problems = "\n".join(
            f"  {'.'.join(map(str, error['loc'])) or 'settings'}: {error['msg'].removeprefix('Value error, ')}"
            for error in exc.errors()
        )
        raise SystemExit(f"albert-spp: invalid configuration:\n{problems}") from None


REFERENCE_INTRO = """# Configuration

Every setting is an environment variable (a `.env` file in the working directory is read too), all defined in one
class, [`shared/settings.py`](../shared/settings.py), whose descriptions make this page (`make docs`;
`tests/unit/test_settings.py` fails when it is stale). A wrong value stops startup with a message naming the
variable. [`.env.example`](../.env.example) lists them all with their defaults.

"""


def _shown_default(name: str) -> str:
    field = Settings.model_fields[name]
    value: object = DEFAULT_LLM_TABLE if name == "LLM_TABLE" else field.default
    if value is None:
        return "unset"
    if value == "":
        return "empty"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def reference() -> str:
    """docs/CONFIGURATION.md: every setting, in the class's order, with its default and description."""
    rows = ["| variable | default | what |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{name}` | {_shown_default(name)} | {description} |")
    return REFERENCE_INTRO + "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(reference(), end="")
