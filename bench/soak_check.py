"""The soak's verdict (bench/soak.py): every accepted job ended once, with a stream that matches its result."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import httpx
import orjson
import redis

from shared import keys

if TYPE_CHECKING:
    from bench.soak import Recovery

FINISHED = ("succeeded", "failed", "cancelled")

INJECTED = {
    "worker_lost": "a worker killed under every attempt",
    "HTTP 500": "HTTP 500 on every attempt (--error-rate)",
    "payload is not completed": "stream cut on every attempt (--cut-rate)",
    "cut before its end": "stream cut on every attempt (--cut-rate)",
}
"""Failure causes the soak provokes on purpose, by a word of the error type or message."""


@dataclass
class Report:
    accepted: int = 0
    succeeded: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    """Jobs that failed (or were cancelled) for a cause the soak did not inject."""
    lost: list[str] = field(default_factory=list)
    doubled: list[str] = field(default_factory=list)
    garbled: list[str] = field(default_factory=list)
    attempts: Counter[int] = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.doubled or self.garbled or self.unexpected)


def _cause(record: dict[str, str]) -> str | None:
    """The injected cause of a failed job, or None when it failed for another reason."""
    error = orjson.loads(record.get("error") or "{}")
    text = f"{error.get('type', '')}: {error.get('message', '')}"
    return next((cause for word, cause in INJECTED.items() if word in text), None)


def _statuses(client: redis.Redis, kids: list[str]) -> list[str | None]:
    with client.pipeline(transaction=False) as pipe:
        for kid in kids:
            pipe.hget(keys.job(kid), "status")
        return pipe.execute()


def wait_finished(client: redis.Redis, kids: list[str], timeout: float) -> None:
    """Until every job has finished (or `timeout` seconds), through Redis restarts."""
    deadline = time.monotonic() + timeout
    pending = kids
    while pending and time.monotonic() < deadline:
        with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
            statuses = _statuses(client, pending)
            pending = [kid for kid, status in zip(pending, statuses, strict=True) if status not in FINISHED]
        time.sleep(0.5)


def check(client: redis.Redis, job_ids: list[str], model: str, timeout: float) -> Report:
    """Wait for the accepted jobs to end, then check each one's record and stream."""
    (first,) = cast(list[str], client.keys(keys.job(f"*:{job_ids[0]}")))
    owner = keys.split_key_id(first.removeprefix(keys.job("")))[0]
    kids = [keys.key_id(owner, job_id) for job_id in job_ids]
    wait_finished(client, kids, timeout)
    report = Report(accepted=len(kids))
    for start in range(0, len(kids), 200):
        chunk = kids[start : start + 200]
        with client.pipeline(transaction=False) as pipe:
            for kid in chunk:
                pipe.hgetall(keys.job(kid))
                pipe.xrange(keys.stream(kid))
            replies: list[Any] = pipe.execute()
        for kid, record, entries in zip(chunk, replies[::2], replies[1::2], strict=True):
            _check_job(report, kid, record, [(fields["t"], fields["d"]) for _, fields in entries])
    return report


def _check_job(report: Report, kid: str, record: dict[str, str], events: list[tuple[str, str]]) -> None:
    status = record.get("status")
    if status not in FINISHED:
        report.lost.append(kid)
        return
    report.attempts[int(record["attempts"])] += 1
    if [kind for kind, _ in events].count("done") != 1:
        report.doubled.append(kid)
    if status == "succeeded":
        report.succeeded += 1
        resets = [index for index, (kind, _) in enumerate(events) if kind == "reset"]
        after = events[resets[-1] + 1 :] if resets else events
        if "".join(data for kind, data in after if kind == "token") != orjson.loads(record["result"])["text"]:
            report.garbled.append(kid)
        return
    cause = _cause(record) if status == "failed" else None
    report.failed[cause or f"not injected: {record.get('error') or status}"] += 1
    if cause is None:
        report.unexpected.append(kid)


def print_report(report: Report, kills: list[Recovery], downtimes: list[float], seconds: float, sim_url: str) -> None:
    print(f"\n== soak: {seconds:.0f} s ==")
    print(f"jobs accepted   {report.accepted}")
    print(f"succeeded       {report.succeeded}")
    print(f"failed          {sum(report.failed.values())}")
    for cause, count in report.failed.most_common():
        print(f"  {count:5d}  {cause}")
    print(f"lost            {len(report.lost)}  {report.lost[:5]}")
    print(f"doubled         {len(report.doubled)}  (jobs whose stream has more than one `done`) {report.doubled[:5]}")
    print(f"garbled         {len(report.garbled)}  (tokens after the last reset differ from its result)")
    print(f"attempts        {dict(sorted(report.attempts.items()))}")
    for n, kill in enumerate(kills, 1):
        print(
            f"kill {n}: {kill.orphans:3d} running jobs; handed back after {seconds_text(kill.handed_back)}, "
            f"all running again elsewhere (or finished) after {seconds_text(kill.running_again)}"
        )
    recovered = [kill.running_again for kill in kills if kill.running_again is not None]
    if recovered:
        print(f"recovery after a kill: median {statistics.median(recovered):.2f} s, max {max(recovered):.2f} s")
    print(f"Redis restarts  {len(downtimes)} ({', '.join(f'{down:.1f} s down' for down in downtimes)})")
    stats = httpx.get(f"{sim_url}/sim/stats", timeout=5).json()
    print(
        f"simulator       {stats['requests']} requests, {stats['completed']} completed, "
        f"{stats['aborted']} aborted, faults {stats['faults']}"
    )
    print("verdict         " + ("OK" if report.ok else "FAILED"))


def seconds_text(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"
