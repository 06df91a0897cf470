"""Large submissions are prepared (template, acronyms, JSON) in a worker thread; small ones on the event loop."""

from __future__ import annotations

import threading

import pytest

from api import jobs as store
from shared.models import JobCreate
from shared.settings import Settings


def _jobs(count: int, chars: int, pairs: int = 0) -> list[JobCreate]:
    text = ("Ma demande à la CAF est bloquée. " * (chars // 33 + 1))[:chars]
    metadata = {f"clé-{number}": number for number in range(pairs)} or None
    return [JobCreate.model_validate({"prompt": text, "template": "spp", "metadata": metadata}) for _ in range(count)]


# Jobs of 48 characters and 32 metadata pairs (the cap): the most that stay on the loop, then one more.
AT_CAPS = store.OFF_LOOP_PROMPT_CHARS // (48 + 32 * store.CHARS_PER_METADATA_PAIR)


@pytest.mark.parametrize(
    ("jobs", "off_loop"),
    [
        (_jobs(3, 1_000), False),
        (_jobs(1, store.OFF_LOOP_PROMPT_CHARS), False),
        (_jobs(1, store.OFF_LOOP_PROMPT_CHARS + 1), True),
        (_jobs(40, 2_000), True),
        (_jobs(AT_CAPS, 48, pairs=32), False),
        (_jobs(AT_CAPS + 1, 48, pairs=32), True),
    ],
    ids=["small", "at-threshold", "one-large", "many-medium", "metadata-at-threshold", "much-metadata"],
)
async def test_large_submissions_are_prepared_off_the_event_loop(
    jobs: list[JobCreate], off_loop: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings()
    threads: set[int] = set()
    prepare = store.request_json

    def spy(job: JobCreate, settings: Settings, batch_id: str | None = None) -> store.Prepared:
        threads.add(threading.get_ident())
        return prepare(job, settings, batch_id)

    monkeypatch.setattr(store, "request_json", spy)

    prepared = await store.request_jsons(jobs, settings)

    assert prepared == [prepare(job, settings) for job in jobs]
    assert threads == ({threading.get_ident()} if not off_loop else threads - {threading.get_ident()})
    assert len(threads) == 1
