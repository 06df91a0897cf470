"""`python -m bench.webhook_receiver`: the webhook receiver of bench/webhooks.py, a process of its own (so that the
benchmark can stop and restart it).

Each POST is verified with the independent `standardwebhooks` package, answered 500 at random (--fail-rate) or 200,
and recorded as a JSON line of --out: `{"id" (webhook-id), "job", "at" (ms of receipt), "end" (ms: the payload's
timestamp, the job's end), "status", "valid"}`, written before the answer is sent. `POST /control {"fail_rate": x}`
changes the rate; `GET /health` answers once it listens.
"""

from __future__ import annotations

import argparse
import random
import time
from datetime import datetime
from pathlib import Path
from typing import IO

import orjson
from aiohttp import web
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


class Receiver:
    def __init__(self, secret: str, fail_rate: float, out: IO[bytes]) -> None:
        self.webhook = Webhook(secret)
        self.fail_rate = fail_rate
        self.out = out
        self.rng = random.Random()

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        at = time.time() * 1000
        try:
            event = self.webhook.verify(body, dict(request.headers))
            valid = True
        except WebhookVerificationError:
            event, valid = orjson.loads(body), False
        end = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp() * 1000
        status = 500 if self.rng.random() < self.fail_rate else 200
        job = event["data"]["id"]
        line = {"id": request.headers["webhook-id"], "job": job, "at": at, "end": end, "status": status, "valid": valid}
        self.out.write(orjson.dumps(line) + b"\n")
        return web.Response(status=status)

    async def control(self, request: web.Request) -> web.Response:
        self.fail_rate = float((await request.json())["fail_rate"])
        return web.Response(status=204)

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.webhook_receiver", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--fail-rate", type=float, default=0.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    with args.out.open("ab", buffering=0) as out:
        receiver = Receiver(args.secret, args.fail_rate, out)
        app = web.Application()
        app.router.add_post("/hook", receiver.hook)
        app.router.add_post("/control", receiver.control)
        app.router.add_get("/health", receiver.health)
        web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, reuse_address=True)


if __name__ == "__main__":
    main()
