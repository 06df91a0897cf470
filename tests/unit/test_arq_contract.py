"""What albert-spp relies on in arq beyond its public API, pinned in one place: an arq upgrade that changes any of
it fails here, with the name of what changed, before a worker misbehaves.

worker/arq_adapter.py overrides arq's `Worker._poll_iteration`, `start_jobs` and `finish_job` and reads the
worker's counters and task maps; shared/lua/take.lua writes arq's job definitions and in-progress keys,
finish.lua and requeue.lua delete them with the try counts; shared/keys.py names arq's keys; the heartbeat
renews the in-progress keys (shared/lua/heartbeat.lua).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import cast

import arq
import orjson
import pytest
from arq import constants
from arq.jobs import deserialize_job_raw
from arq.worker import Worker, func

from shared import keys
from worker.arq_adapter import JOB_FUNCTION
from worker.generate import generate


def test_arq_is_the_version_the_adapter_was_written_for() -> None:
    assert arq.VERSION.startswith("0.28."), (
        f"arq {arq.VERSION}: review worker/arq_adapter.py and its scripts against it"
    )


def test_arqs_key_prefixes_are_the_ones_our_scripts_write() -> None:
    assert (constants.job_key_prefix, constants.in_progress_key_prefix, constants.retry_key_prefix) == (
        keys.ARQ_JOB,
        keys.ARQ_IN_PROGRESS,
        keys.ARQ_RETRY,
    )


@pytest.mark.parametrize(
    ("method", "parameters"),
    [
        ("_poll_iteration", ["self"]),
        ("start_jobs", ["self", "job_ids"]),
        ("run_job", ["self", "job_id", "score"]),
        (
            "finish_job",
            [
                "self",
                "job_id",
                "finish",
                "result_data",
                "result_timeout_s",
                "keep_result_forever",
                "incr_score",
                "keep_in_progress",
            ],
        ),
        ("_jobs_started", ["self"]),
        ("handle_sig", ["self", "signum"]),
        ("_release_sem_dec_counter_on_complete", ["self"]),
    ],
)
def test_the_worker_methods_we_override_or_call_keep_their_signatures(method: str, parameters: list[str]) -> None:
    assert list(inspect.signature(getattr(Worker, method)).parameters) == parameters, f"arq's Worker.{method}"


def test_arqs_poll_hands_the_queue_head_to_start_jobs() -> None:
    """ModelWorker.start_jobs takes the jobs with take.lua: arq's poll must still call it with the head's ids."""
    assert "await self.start_jobs(job_ids)" in inspect.getsource(Worker._poll_iteration)


def test_arqs_run_ends_with_finish_job_and_it_only_deletes_the_keys_our_scripts_delete() -> None:
    """ArqWorker.finish_job skips arq's bookkeeping of a job whose end finish.lua or requeue.lua wrote: that is
    sound while arq's own removes nothing but the queue entry, the abort mark (unused: allow_abort_jobs off),
    the definition, the in-progress key and the try count, and stores no result (keep_result=0)."""
    assert "self.finish_job(" in inspect.getsource(Worker.run_job)
    source = inspect.getsource(Worker.finish_job)
    for name in ("in_progress_key_prefix", "retry_key_prefix", "job_key_prefix", "abort_jobs_ss", "self.queue_name"):
        assert name in source, f"arq's finish_job no longer touches {name}"
    assert "if result_data:" in source, "arq stores a result only when asked"
    finish = (Path(__file__).resolve().parents[2] / "shared" / "lua" / "finish.lua").read_text()
    assert "redis.call('DEL', ARGV[22] .. job[3], ARGV[23] .. job[3], ARGV[24] .. job[3])" in finish


def test_the_worker_attributes_we_read_exist() -> None:
    worker = Worker(functions=[func(generate, name=JOB_FUNCTION)], queue_name="q", max_jobs=3)
    names = ("sem", "job_counter", "max_jobs", "tasks", "job_tasks", "aborting_tasks", "loop", "allow_pick_jobs")
    for name in (*names, "job_timeout_s"):
        assert hasattr(worker, name), f"arq's Worker.{name}"
    assert hasattr(worker, "in_progress_timeout_s"), "arq's Worker.in_progress_timeout_s (the lease we shorten)"


def test_arq_reads_the_job_definition_take_lua_writes() -> None:
    """take.lua's definition, as it writes it, read back by arq's own deserializer."""
    take = (Path(__file__).resolve().parents[2] / "shared" / "lua" / "take.lua").read_text()
    assert """'{"t":null,"f":"' .. fn .. '","a":' .. cjson.encode({kid}) .. ',"k":{},"et":' .. now .. '}'""" in take
    written = b'{"t":null,"f":"' + JOB_FUNCTION.encode() + b'","a":["owner:job-1"],"k":{},"et":1733390000000}'
    function, args, kwargs, tries, enqueued = deserialize_job_raw(written, deserializer=orjson.loads)
    assert function == JOB_FUNCTION
    assert list(args) == ["owner:job-1"]
    assert kwargs == {}
    assert cast(object, tries) is None, "arq's annotation says int; it reads take.lua's null"
    assert enqueued == 1733390000000
