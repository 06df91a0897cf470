"""The arq adapter's own behaviour: arq's bookkeeping skipped after a run whose end our script wrote."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from arq.worker import Worker

from tests.unit.conftest import make_settings
from worker.arq_adapter import ArqWorker


async def _noop(ctx: dict[Any, Any], *args: Any, **kwargs: Any) -> None:
    return None


async def _none_taken(candidates: list[str], slots: int) -> list[tuple[str, float]]:
    return []


def _worker() -> ArqWorker:
    return ArqWorker(
        settings=make_settings(),
        queue="spp:queue:m",
        function_name="generate",
        function=_noop,
        take=_none_taken,
        health_check_key="spp:queue:m:health-check:test",
        on_startup=_noop,
        on_shutdown=_noop,
    )


async def test_arqs_finish_runs_only_for_a_run_our_script_did_not_end(monkeypatch: pytest.MonkeyPatch) -> None:
    finished: list[str] = []

    async def arqs_finish_job(self: Worker, job_id: str, *args: Any) -> None:
        finished.append(job_id)

    monkeypatch.setattr(Worker, "finish_job", arqs_finish_job)
    worker = _worker()
    worker.settled.add("settled#1")

    await worker.finish_job("settled#1", True, None, 0, False, None, None)
    await worker.finish_job("unsettled#1", True, None, 0, False, None, None)
    await worker.finish_job("settled#1", True, None, 0, False, None, None)  # once only: the mark is spent

    assert finished == ["unsettled#1", "settled#1"]
    assert worker.settled == set()


async def test_a_job_is_stopped_on_purpose_only_while_its_task_runs() -> None:
    worker = _worker()
    task = asyncio.create_task(asyncio.sleep(60))
    worker.job_tasks["run#1"] = task

    assert worker.stop_job("run#1")
    with pytest.raises(asyncio.CancelledError):
        await task
    assert worker.aborting == {"run#1"}
    assert not worker.stop_job("run#1"), "done"
    assert not worker.stop_job("other#1"), "not running here"
