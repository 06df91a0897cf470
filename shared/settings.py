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
    ENV: Literal["unittest", "dev", "staging", "prod"] = "dev"
    APP_VERSION: str = "0.1.0"
    API_HOST: str = "127.0.0.1"
    API_PORT: int = Field(8000, ge=1, le=65535)
    API_ROOT_PATH: str = ""
    API_METRICS_PORT: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port of the API's /metrics, apart from the API's (on API_METRICS_HOST); 0: on API_PORT.",
    )
    API_METRICS_HOST: str = Field("127.0.0.1", description="Address of the API's /metrics with API_METRICS_PORT.")
    FORWARDED_ALLOW_IPS: str = Field(
        "127.0.0.1,::1",
        description="Addresses of the reverse proxies whose X-Forwarded-For/-Proto the API trusts (uvicorn's); '*' "
        "trusts any. A client's address counts for AUTH_FAILURES_PER_MINUTE and the logs.",
    )
    API_DOCS: bool = Field(
        True, description="Serve /docs and /openapi.json; false hides the API's description (e.g. in prod)."
    )
    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    LOG_FORMAT: Literal["auto", "json", "text"] = Field(
        "auto", description="json: one object per line; text: for a terminal; auto: text on a terminal, else json."
    )

    # API keys: a JSON file {"client name": "key"} and/or a comma-separated list.
    API_KEYS_FILE: Path | None = None
    API_KEYS: str = Field("", repr=False)
    RATE_LIMIT: float | None = Field(
        None, ge=0, description="Requests per second per API key; 0 disables; unset: 0 in dev/unittest, else 20."
    )
    RATE_LIMIT_BURST: int = Field(40, ge=1, description="Requests a key may send at once above its rate.")
    AUTH_FAILURES_PER_MINUTE: int = Field(
        30,
        ge=0,
        description="Failed authentications an address may make in a minute (all API processes); past it, its "
        "requests are refused (429) before their key is checked, until the minute ends. 0 disables.",
    )
    API_REDIS_CONNECTIONS: int = Field(
        3,
        ge=2,
        description="Pooled Redis connections of one API process (requests wait for a free one, never fail); reading "
        "and submitting jobs share one more, SSE subscribers one reader: 5 in all.",
    )
    MAX_BODY_BYTES: int = Field(32 * 2**20, ge=1024, description="Largest request body (file uploads aside).")
    BODY_IDLE_TIMEOUT: float = Field(
        30.0, gt=0, description="Seconds a request body (file uploads too) may go without a byte; beyond: 408."
    )
    BODY_READ_TIMEOUT: float = Field(
        60.0, gt=0, description="Seconds a request body (file uploads aside) may take to arrive whole; beyond: 408."
    )
    DASHBOARD_CLIENTS: str = Field(
        "", description="Comma-separated client names (of API_KEYS_FILE) allowed to see /dashboard outside dev."
    )
    CORS_ORIGINS: str = Field(
        "", description="Comma-separated origins allowed by CORS; '*' allows any, without credentials."
    )

    # Client policies: the defaults of every client; API_KEYS_FILE may set any of them per client (shared/policy.py).
    CLIENT_WEIGHT: float = Field(
        1.0, gt=0, le=1000, description="A client's share of each model's GPU time (in tokens) against the others'."
    )
    CLIENT_MAX_PRIORITY: int = Field(
        9, ge=0, le=9, description="Highest `priority` (0-9) a client may give its jobs; they reorder its own share."
    )
    CLIENT_MAX_QUEUED_JOBS: int = Field(
        5_000, ge=0, description="Interactive jobs a client may have queued or running, all models; 0: unlimited."
    )
    CLIENT_MAX_RUNNING_JOBS: int = Field(
        0, ge=0, description="Jobs of a client running at once on each model; 0: unlimited (its fair share only)."
    )
    CLIENT_MAX_ACTIVE_BATCHES: int = Field(10, ge=0, description="Batches a client may have unfinished; 0: unlimited.")
    CLIENT_MAX_STORED_BYTES: int = Field(
        512 * 2**20, ge=0, description="Bytes of files and metadata a client may keep stored; 0: unlimited."
    )
    CLIENT_TOKENS_PER_DAY: int = Field(
        0,
        ge=0,
        description="Tokens (prompt + max_tokens, settled with the real usage) a client may use per UTC day; "
        "0: unlimited.",
    )
    CLIENT_MAX_STREAMS: int = Field(100, ge=0, description="Event streams a client may hold open; 0: unlimited.")
    CLIENT_MAX_UPLOADS: int = Field(4, ge=0, description="File uploads a client may send at once; 0: unlimited.")

    # Redis: REDIS_URL wins over REDIS_HOST/REDIS_PORT/REDIS_PASSWORD.
    REDIS_URL: str | None = None
    REDIS_HOST: str = "127.0.0.1"
    REDIS_PORT: int = Field(6379, ge=1, le=65535)
    REDIS_PASSWORD: str | None = None
    REDIS_DB: int = Field(0, ge=0)
    REDIS_SENTINELS: str = Field(
        "", description="Comma-separated host:port of Redis Sentinels; when set, the master is found through them."
    )
    REDIS_SENTINEL_MASTER: str = Field("mymaster", description="The name of the master the Sentinels watch.")
    REDIS_MAXMEMORY: str = Field(
        "1gb",
        pattern=r"^\s*([0-9]+([kKmMgG][bB]?|[bB])?)?\s*$",
        description="maxmemory of the redis-server `make run` starts (with the noeviction policy), in Redis's "
        "units (e.g. 1gb, 512mb); empty or 0: no limit. A Redis configured elsewhere is not changed.",
    )

    # Models
    LLM_TABLE: Annotated[list[Backend], NoDecode] = Field(default_factory=lambda: parse_llm_table(DEFAULT_LLM_TABLE))
    SIM_PORT: int = Field(
        8081,
        ge=1,
        le=65535,
        description="Port of the vLLM simulator `make run` starts when LLM_TABLE is unset (or the default).",
    )
    LLM_API_KEY: str | None = Field(
        None,
        repr=False,
        description="Bearer key sent to every model server (vLLM's --api-key); an LLM_TABLE entry may have its own.",
    )
    LLM_CA_BUNDLE: Path | None = Field(
        None, description="PEM file of the CA(s) that sign https:// model servers' certificates (a private CA)."
    )
    BACKEND_TIMEOUT: float = Field(600.0, gt=0, description="Seconds a whole generation may take.")
    BACKEND_CONNECT_TIMEOUT: float = Field(5.0, gt=0)
    BACKEND_READ_TIMEOUT: float = Field(
        120.0, gt=0, description="Seconds of silence from a model server before the attempt is abandoned."
    )
    FIRST_TOKEN_TIMEOUT: float = Field(
        60.0, gt=0, description="Seconds from sending a request to its first token before the attempt is abandoned."
    )
    REPLICA_MAX_FAILURES: int = Field(
        3, ge=1, description="Consecutive transient failures after which a replica is skipped for a while."
    )
    REPLICA_COOLDOWN: float = Field(
        10.0, gt=0, description="Seconds a failing replica is first skipped; doubles each time it fails again."
    )

    # Jobs
    RESULT_TTL: int = Field(172_800, ge=1, description="Seconds a finished job is kept.")
    STREAM_TTL: int = Field(3_600, ge=1, description="Seconds a finished job's token stream is kept.")
    MAX_JOBS_PER_REQUEST: int = Field(1_000, ge=1)
    MAX_QUEUE_DEPTH: int = Field(
        10_000, ge=0, description="Queued interactive jobs per model (batch jobs aside); 0: unlimited."
    )
    MAX_BATCH_QUEUE_DEPTH: int = Field(
        100_000,
        ge=0,
        description="Queued batch jobs per model (twice BATCH_MAX_LINES); a batch that would exceed it fails whole. "
        "0: unlimited.",
    )
    MAX_PROMPT_CHARS: int = Field(200_000, ge=1)
    MAX_MESSAGES: int = Field(256, ge=1)
    MAX_TOKENS_LIMIT: int = Field(32_768, ge=1)
    DEFAULT_MAX_TOKENS: int = Field(512, ge=1)
    JOB_MAX_ATTEMPTS: int = Field(3, ge=1, description="Attempts per job for transient backend failures.")
    RETRY_BACKOFF: float = Field(1.0, ge=0, description="First retry delay in seconds; doubles, with jitter.")
    JOB_DEADLINE: float = Field(
        3_600.0, gt=0, description="Seconds from a job's creation after which it is not retried anymore."
    )

    # Webhooks (`python -m webhooks`, Standard Webhooks deliveries of jobs' and batches' ends)
    WEBHOOK_SECRET_KEY: str = Field(
        "",
        repr=False,
        description="Server key each client's webhook signing secret is derived from (HMAC-SHA256 of the client), "
        "unless its policy sets `webhook_secret`: at least 32 characters, required in staging and prod. Changing it "
        "changes every derived secret.",
    )
    WEBHOOK_ALLOWED_HOSTS: str = Field(
        "",
        description="Comma-separated hosts whose webhook URLs may be or resolve to private, loopback or link-local "
        "addresses (a receiver on an internal network); any other such URL is refused.",
    )
    WEBHOOK_TIMEOUT: float = Field(
        15.0, gt=0, description="Seconds one delivery attempt may take, from resolving the host to the answer."
    )
    WEBHOOK_RETRY_HOURS: float = Field(
        24.0, gt=0, description="Hours from an event's first delivery attempt during which failed attempts are retried."
    )
    WEBHOOK_RETRY_SCHEDULE: str = Field(
        "5,300,1800,7200,18000,36000",
        pattern=r"^\s*[0-9]+(\.[0-9]+)?(\s*,\s*[0-9]+(\.[0-9]+)?)*\s*$",
        description="Seconds before each retry of a failed delivery, the last one repeating (up to "
        "WEBHOOK_RETRY_HOURS): Standard Webhooks' schedule, 5 s, 5 min, 30 min, 2 h, 5 h, then every 10 h.",
    )
    WEBHOOK_CONCURRENCY: int = Field(256, ge=1, description="Deliveries one delivery process sends at once.")
    WEBHOOK_CONCURRENCY_PER_CLIENT: int = Field(
        16,
        ge=1,
        description="Deliveries of one client in flight at once, so that a slow or failing receiver of one client "
        "delays no other client's.",
    )
    WEBHOOK_METRICS_PORT: int = Field(
        0, ge=0, le=65535, description="Port of the delivery process's /metrics (on WORKER_METRICS_HOST); 0: none."
    )

    # Files and batches (the OpenAI Files and Batch API)
    BATCH_MAX_LINES: int = Field(50_000, ge=1, description="Lines (blank ones too) of one batch input file.")
    BATCH_MAX_LINE_BYTES: int = Field(
        4 * 2**20,
        ge=1,
        description="Bytes of one line of a batch input file: above the largest valid request (MAX_PROMPT_CHARS "
        "characters written as JSON \\u escapes, 12 bytes each for 4-byte UTF-8, is 2.4 MB).",
    )
    BATCH_MAX_BYTES: int = Field(200 * 2**20, ge=1, description="Bytes of one uploaded file.")
    FILE_TTL: int | None = Field(None, ge=1, description="Seconds an uploaded file is kept; unset: RESULT_TTL.")

    # Worker
    WORKER_MAX_JOBS: int = Field(256, ge=1, description="Generations one worker runs at once.")
    WORKER_IDLE_POLL: float = Field(1.0, gt=0, description="Seconds an idle worker waits between polls.")
    WORKER_HEARTBEAT: float = Field(1.0, gt=0, description="Seconds between heartbeats of running jobs.")
    WORKER_SHUTDOWN_GRACE: float = Field(
        30.0, ge=0, description="Seconds a stopping worker lets running generations finish before handing them back."
    )
    WORKER_METRICS_PORT: int = Field(9180, ge=0, le=65535, description="Port of a worker's /metrics; 0: none.")
    WORKER_METRICS_HOST: str = Field("127.0.0.1", description="Address a worker's /metrics listens on.")
    STREAM_FLUSH_MS: int = Field(100, ge=0, description="Token coalescing window, in milliseconds.")

    # Services Publics Plus: what the old endpoints (/anonymize) generate with
    SPP_TEMPLATE: str = "spp"
    SPP_MAX_TOKENS: int = Field(1024, ge=1)
    SPP_TEMPERATURE: float = Field(0.2, ge=0, le=2)
    SPP_TOP_P: float = Field(1.0, gt=0, le=1)

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
        API then refuses a non-loopback API_HOST (`api.main.open_access_refusal`): not checked here, since the
        workers, which share these settings, listen on no API_HOST."""
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
