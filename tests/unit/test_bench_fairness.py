"""bench/fairness.py's arithmetic: tokens per window, Jain's index, the scheduler's cost it mirrors, and its sizes.

The benchmark itself starts a stack for minutes (`python -m bench fairness --quick`, under 2 minutes); these check
what its figures are computed from, without a process.
"""

from __future__ import annotations

import json
import random

import httpx
import pytest

from api.jobs import request_json
from bench import fairness
from bench.__main__ import BENCHMARKS, parser
from bench.common import MODEL
from bench.fairness import Run, jain, spread
from shared.models import JobCreate
from shared.settings import Settings
from sim.textgen import make_plan


def test_a_run_is_spread_over_the_windows_it_overlaps() -> None:
    runs = [Run(started=5.0, finished=25.0, tokens=200, cost=400)]

    assert spread(runs, 0.0, 10.0, 3) == [50.0, 100.0, 50.0]
    assert spread(runs, 0.0, 10.0, 3, "cost") == [100.0, 200.0, 100.0]
    assert spread(runs, 0.0, 10.0, 3, "started") == [200.0, 0.0, 0.0]


def test_only_the_part_inside_the_windows_counts() -> None:
    runs = [Run(started=-10.0, finished=10.0, tokens=100, cost=300), Run(started=19.0, finished=19.0, tokens=7, cost=9)]

    assert spread(runs, 0.0, 10.0, 2) == [50.0, 7.0], "half of the first run is before the first window"
    assert spread(runs, 0.0, 10.0, 2, "cost") == [150.0, 9.0]
    assert spread(runs, 0.0, 10.0, 2, "started") == [0.0, 7.0], "the first run started before the windows"


def test_jain_index() -> None:
    assert jain([5.0, 5.0]) == 1.0
    assert jain([10.0, 0.0]) == 0.5
    assert jain([1.0, 3.0]) == pytest.approx(0.8)
    assert jain([0.0, 0.0]) == 1.0


def test_the_cost_is_the_schedulers(settings: Settings) -> None:
    rng = random.Random(3)
    for index in range(50):
        body = fairness.job_body(rng, index)
        cost = request_json(JobCreate.model_validate(body), settings).cost
        assert fairness.estimated_cost(body) == cost


def test_a_window_holds_hundreds_of_jobs_after_the_first_ones_ended() -> None:
    mean_s = (fairness.SIM["prefill_ms"] + fairness.SIM["ms_per_token"] * sum(fairness.LENGTHS) / 3) / 1000
    assert 30 * fairness.SLOTS / mean_s > 300
    longest_s = (fairness.SIM["prefill_ms"] + fairness.SIM["ms_per_token"] * max(fairness.LENGTHS)) / 1000
    assert longest_s < fairness.WARMUP_S, "the jobs taken before every client had submitted end before the windows"


def test_the_early_client_stops_far_below_its_max_tokens() -> None:
    rng = random.Random(5)
    jobs = [fairness.job_body(rng, index, fairness.EARLY_STOP) for index in range(200)]
    plans = [make_plan(MODEL, job["prompt"], None, job["params"]["max_tokens"], job["params"]["stop"]) for job in jobs]

    generated = sum(plan.completion_tokens for plan in plans)
    assert generated < 0.15 * sum(job["params"]["max_tokens"] for job in jobs)
    assert all(plan.finish_reason == "stop" for plan in plans if plan.completion_tokens < 32)


def test_top_ups_keep_each_client_backlogged_and_remember_the_low_point() -> None:
    queued = {"whole": 10, "early": 300}
    posted: dict[str, list[dict[str, object]]] = {"whole": [], "early": []}

    def answer(request: httpx.Request) -> httpx.Response:
        client = request.headers["authorization"].removeprefix("Bearer ").removesuffix("-key")
        if request.url.path == "/v1/usage":
            return httpx.Response(200, json={"usage": {"queued_jobs": queued[client]}})
        jobs, first = json.loads(request.content), len(posted[client])
        posted[client] += jobs
        return httpx.Response(202, json=[{"id": f"{client}-{first + n}"} for n in range(len(jobs))])

    backlog = fairness.Backlog(fairness.FULL_CASES[2], watching=True)
    with httpx.Client(base_url="http://api.test", transport=httpx.MockTransport(answer)) as http:
        backlog.top_up(http)
        queued["whole"] = 200
        backlog.top_up(http)

    assert len(posted["whole"]) == 2 * (fairness.SLOTS + fairness.BACKLOG) - 10 - 200
    assert posted["early"] == [], "above the mark: nothing submitted"
    assert backlog.fewest == {"whole": 10, "early": 300}
    assert len(backlog.bodies["whole"]) == len(posted["whole"])
    assert all("stop" not in job["params"] for job in backlog.bodies["whole"].values())


def test_quick_and_full_sizes() -> None:
    assert "fairness" in BENCHMARKS
    quick = fairness.sizes(parser().parse_args(["fairness", "--quick"]))
    full = fairness.sizes(parser().parse_args(["fairness", "--fair-windows", "6"]))

    assert (quick.windows, quick.window_s, quick.cases) == (2, 10.0, fairness.QUICK_CASES)
    assert (full.windows, full.window_s, full.cases) == (6, 30.0, fairness.FULL_CASES)
    assert sorted(quick.cases[0].weights.values()) == [1, 1, 3], "a 3:1 pair and two equal clients in one case"
    assert [sorted(case.weights.values()) for case in full.cases] == [[1, 3], [1, 1], [1, 1]]
    assert full.cases[-1].stops == {"early": fairness.EARLY_STOP}, "the estimate exceeds one client's real tokens"
