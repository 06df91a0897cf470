"""Property-based fuzzing of the OpenAPI schema: no 5xx, and every answer conforms to the schema.

Each operation gets a bounded number of generated cases (valid and invalid), sent to a real API.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.conftest import AUTH, Sim, Stack

MODEL = "fuzz/model"
# Routes that hold the connection until a job ends are tested elsewhere, not fuzzed.
LONG_LIVED = r"/events$|/completions$"
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, negative_data_rejection]


@pytest.fixture(scope="module")
def api_schema(start_stack: Callable[..., Stack], start_sim: Callable[..., Sim]) -> Any:
    sim = start_sim(MODEL)
    stack = start_stack([(MODEL, sim.url)])
    return schemathesis.openapi.from_url(f"{stack.url}/openapi.json").exclude(path_regex=LONG_LIVED)


def test_no_server_error_and_schema_conformance(api_schema: Any) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 8

    failures: list[str] = []
    for operation in operations:

        @hypothesis.settings(
            max_examples=25,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        @hypothesis.given(case=operation.as_strategy())
        def fuzz(case: schemathesis.Case[Any]) -> None:
            case.call_and_validate(headers=AUTH, timeout=10, checks=CHECKS)

        try:
            fuzz()
        except Exception as exc:  # one report for every operation, not only the first failing one
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert not failures, "\n\n".join(failures)
