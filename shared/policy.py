"""What each client (API key) may do: its share of the GPUs, its priorities and its limits.

Every field has a default in Settings (`CLIENT_*`, and RATE_LIMIT/RATE_LIMIT_BURST for the rate; the webhook fields
have none: unset); a client of API_KEYS_FILE may set any of them (api/auth.py):

    {"platform-a": "key-a", "platform-b": {"key": "key-b", "weight": 3, "max_queued_jobs": 20000}}

A plain key is a client with the defaults, as in the seed's file.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.settings import Settings
from shared.webhooks import JobEvent, check_secret, check_url

MAX_PRIORITY = 9
"""Job priorities go from 0 (the default) to 9; a higher one runs first within its client's share."""


class ClientPolicy(BaseModel):
    """One client's policy, defaults applied."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    weight: float = Field(gt=0, le=1000, description="Share of each model's GPU time (tokens) against the others'.")
    max_priority: int = Field(ge=0, le=MAX_PRIORITY, description="Highest `priority` the client may give a job.")
    max_queued_jobs: int = Field(ge=0, description="Interactive jobs queued or running, all models; 0: unlimited.")
    max_running_jobs: int = Field(ge=0, description="Jobs running at once on each model; 0: unlimited.")
    max_active_batches: int = Field(ge=0, description="Unfinished batches; 0: unlimited.")
    max_stored_bytes: int = Field(ge=0, description="Bytes of files and metadata kept; 0: unlimited.")
    tokens_per_day: int = Field(ge=0, description="Tokens a UTC day (reserved at submission); 0: unlimited.")
    max_streams: int = Field(ge=0, description="Event streams open at once; 0: unlimited.")
    max_uploads: int = Field(ge=0, description="File uploads in progress at once; 0: unlimited.")
    rate_limit: float = Field(ge=0, description="Requests per second; 0: unlimited.")
    rate_limit_burst: int = Field(ge=1, description="Requests above the rate at once.")
    webhook_url: str | None = Field(
        None, max_length=2048, description="Webhook of the client's jobs that carry none (Standard Webhooks)."
    )
    webhook_events: list[JobEvent] | None = Field(
        None, min_length=1, description="The job ends `webhook_url` is called for; default: all of them."
    )
    webhook_secret: str | None = Field(
        None,
        exclude=True,
        repr=False,
        description="The client's signing secret (`whsec_...`); default: derived from WEBHOOK_SECRET_KEY. Never shown.",
    )

    @field_validator("webhook_url")
    @classmethod
    def _check_webhook_url(cls, url: str | None) -> str | None:
        # The operator's configuration: its form here; its addresses at each delivery (WEBHOOK_ALLOWED_HOSTS).
        return None if url is None else check_url(url, None)

    @field_validator("webhook_secret")
    @classmethod
    def _check_webhook_secret(cls, secret: str | None) -> str | None:
        return None if secret is None else check_secret(secret)


POLICY_FIELDS = tuple(ClientPolicy.model_fields)


def default_policy(settings: Settings) -> ClientPolicy:
    """The policy of a client that sets nothing: the CLIENT_* settings."""
    return ClientPolicy(
        weight=settings.CLIENT_WEIGHT,
        max_priority=settings.CLIENT_MAX_PRIORITY,
        max_queued_jobs=settings.CLIENT_MAX_QUEUED_JOBS,
        max_running_jobs=settings.CLIENT_MAX_RUNNING_JOBS,
        max_active_batches=settings.CLIENT_MAX_ACTIVE_BATCHES,
        max_stored_bytes=settings.CLIENT_MAX_STORED_BYTES,
        tokens_per_day=settings.CLIENT_TOKENS_PER_DAY,
        max_streams=settings.CLIENT_MAX_STREAMS,
        max_uploads=settings.CLIENT_MAX_UPLOADS,
        rate_limit=settings.rate_limit,
        rate_limit_burst=settings.RATE_LIMIT_BURST,
    )


def client_policy(default: ClientPolicy, overrides: dict[str, Any]) -> ClientPolicy:
    """`default` with a client's own values; raises ValueError naming each wrong field."""
    try:
        # model_dump leaves `webhook_secret` out (it is never serialized): the default's is carried over by hand.
        return ClientPolicy.model_validate(
            default.model_dump() | {"webhook_secret": default.webhook_secret} | overrides
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc']))}: {error['msg']}".replace("Extra inputs are not permitted", "unknown")
            for error in exc.errors()
        )
        raise ValueError(f"{problems} (known: {', '.join(POLICY_FIELDS)})") from None
