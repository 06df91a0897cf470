"""The caller's webhook signing secret: what its receivers verify `webhook-signature` with (Standard Webhooks)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import CallerDep, SettingsDep
from shared.webhooks import signing_secret

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


class WebhookSecret(BaseModel):
    secret: str = Field(
        description="`whsec_` and the base64 of the key: verify each delivery's `webhook-signature` with it (e.g. "
        "`standardwebhooks.Webhook(secret).verify(body, headers)`). Keep it secret."
    )


@router.get("/secret")
async def webhook_secret(caller: CallerDep, settings: SettingsDep) -> WebhookSecret:
    """The caller's signing secret: the same for all its webhooks, its jobs' and its batches'."""
    return WebhookSecret(secret=signing_secret(caller.policy, caller.owner, settings))
