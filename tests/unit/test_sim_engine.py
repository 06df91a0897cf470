"""The simulator's pure parts: tokenizer, text planning, scheduler, pacing, faults, configuration."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from sim.__main__ import parse_config
from sim.config import DEFAULT_MODEL, SimConfig
from sim.engine import Pacer, Scheduler
from sim.faults import Fault, FaultInjector
from sim.stats import Stats
from sim.textgen import make_plan
from sim.tokenizer import apply_chat_template, count_tokens, token_ids, tokenize


async def wait_for(condition: Callable[[], bool], within: float = 2.0) -> None:
    """Let the loop run until `condition` holds, failing after `within` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.001)


def test_tokenizer_counts_words_and_punctuation() -> None:
    assert tokenize("Bonjour, Madame.") == ["Bonjour", ",", "Madame", "."]
    assert count_tokens("votre carte grise") == 3
    assert token_ids("carte carte") == [token_ids("carte")[0]] * 2


def test_chat_template_accepts_text_parts() -> None:
    text = apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "Bonjour"}]}])
    assert text == "<|user|>\nBonjour\n<|assistant|>\n"
    assert count_tokens(text) == 11


def test_plan_is_deterministic_per_model_prompt_and_seed() -> None:
    plan = make_plan("m", "Bonjour", 7, 40)
    assert make_plan("m", "Bonjour", 7, 40) == plan
    assert make_plan("m", "Bonjour", 8, 40).text != plan.text
    assert make_plan("other", "Bonjour", 7, 40).text != plan.text
    assert make_plan("m", "Bonsoir", 7, 40).text != plan.text


@pytest.mark.parametrize("max_tokens", [1, 2, 20, 300])
def test_plan_has_exactly_max_tokens(max_tokens: int) -> None:
    plan = make_plan("m", "Bonjour", None, max_tokens)
    assert len(plan.pieces) == plan.completion_tokens == max_tokens
    assert (plan.finish_reason, plan.stop_reason) == ("length", None)
    assert count_tokens(plan.text) == max_tokens
    assert plan.text[1].isupper()


def test_early_stop_ends_before_max_tokens_with_the_same_prefix() -> None:
    full = make_plan("m", "Bonjour", 3, 50)
    early = make_plan("m", "Bonjour", 3, 50, early_stop_rate=1.0)
    assert early.finish_reason == "stop"
    assert early.stop_reason is None
    assert 1 <= early.completion_tokens < 50
    assert len(early.pieces) == early.completion_tokens
    assert early.pieces[:-1] == full.pieces[: early.completion_tokens - 1]
    assert make_plan("m", "Bonjour", 3, 1, early_stop_rate=1.0).finish_reason == "length"


def test_stop_string_truncates_the_text() -> None:
    full = make_plan("m", "Bonjour", 1, 60)
    stop = full.pieces[10].strip()
    plan = make_plan("m", "Bonjour", 1, 60, stop=["zzz", stop])
    assert plan.text == full.text[: full.text.index(stop)]
    assert (plan.finish_reason, plan.stop_reason) == ("stop", stop)
    assert plan.completion_tokens <= 11
    assert make_plan("m", "Bonjour", 1, 60, stop=["zzz"]) == full


def test_stop_string_spanning_tokens() -> None:
    full = make_plan("m", "Bonjour", 2, 60)
    stop = full.pieces[4] + full.pieces[5]
    plan = make_plan("m", "Bonjour", 2, 60, stop=[stop])
    assert plan.text == full.text[: full.text.index(stop)]
    assert plan.finish_reason == "stop"
    assert plan.pieces


async def test_scheduler_bounds_running_and_counts_aborts() -> None:
    stats = Stats()
    scheduler = Scheduler(2, stats)
    release = asyncio.Event()

    async def request() -> None:
        async with scheduler.slot("m"):
            await release.wait()

    tasks = [asyncio.create_task(request()) for _ in range(3)]
    await wait_for(lambda: stats.running["m"] == 2 and stats.waiting["m"] == 1)
    tasks[0].cancel()
    await wait_for(lambda: stats.aborted == 1 and stats.running["m"] == 2 and stats.waiting["m"] == 0)
    release.set()
    await asyncio.gather(*tasks[1:])
    assert (stats.running["m"], stats.waiting["m"], stats.aborted) == (0, 0, 1)


async def test_scheduler_counts_a_request_cancelled_while_waiting() -> None:
    stats = Stats()
    scheduler = Scheduler(1, stats)
    release = asyncio.Event()

    async def request() -> None:
        async with scheduler.slot("m"):
            await release.wait()

    first, second = asyncio.create_task(request()), asyncio.create_task(request())
    await wait_for(lambda: stats.waiting["m"] == 1)
    second.cancel()
    await wait_for(lambda: stats.aborted == 1 and stats.waiting["m"] == 0)
    release.set()
    await first
    assert stats.running["m"] == 0


async def test_pacer_uses_absolute_deadlines() -> None:
    start = time.monotonic()
    pacer = Pacer(0.02, 0.01)
    for index in range(5):
        await pacer.until(index)
    assert 0.055 <= time.monotonic() - start < 1.0


def test_faults_follow_rates_and_precedence() -> None:
    everything = FaultInjector(SimConfig(hang_rate=1, error_rate=1, cut_rate=1, midstream_error_rate=1))
    assert everything.decide(stream=True) is Fault.HANG
    streams = FaultInjector(SimConfig(cut_rate=1, midstream_error_rate=1))
    assert streams.decide(stream=False) is None
    assert streams.decide(stream=True) is Fault.CUT
    midstream = FaultInjector(SimConfig(midstream_error_rate=1))
    assert midstream.decide(stream=True, error_chunks=False) is None
    assert midstream.decide(stream=True) is Fault.MIDSTREAM_ERROR
    assert FaultInjector(SimConfig()).decide(stream=True) is None


def test_fault_seed_makes_draws_reproducible() -> None:
    def draws(seed: int) -> list[Fault | None]:
        injector = FaultInjector(SimConfig(error_rate=0.5, fault_seed=seed))
        return [injector.decide(stream=False) for _ in range(50)]

    assert draws(1) == draws(1)
    assert Fault.ERROR in draws(1)
    assert None in draws(1)


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="rates"):
        SimConfig(cut_rate=1.5)
    with pytest.raises(ValueError, match="model"):
        SimConfig(models=())


def test_cli_options_map_to_the_config() -> None:
    config = parse_config(["--model", "a", "--model", "b", "--ms-per-token", "20", "--legacy-errors"])
    assert config.models == ("a", "b")
    assert config.ms_per_token == 20
    assert config.legacy_errors
    assert parse_config([]).models == (DEFAULT_MODEL,)
    assert parse_config(["--generate-delimiter", "nul"]).delimiter == b"\0"
