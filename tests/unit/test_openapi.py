"""The OpenAPI document is whole: every schema it refers to is in it, every route has a summary."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest

from api.main import create_app
from tests.unit.conftest import make_settings


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    schema: dict[str, Any] = create_app(make_settings()).openapi()
    return schema


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', orjson.dumps(document).decode()))
    assert refs
    assert sorted(refs - set(document["components"]["schemas"])) == []


def test_hand_parsed_bodies_are_documented(document: dict[str, Any]) -> None:
    body = document["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["oneOf"][0] == {"$ref": "#/components/schemas/JobCreate"}
    assert "prompt" in document["components"]["schemas"]["JobCreate"]["properties"]


def test_every_operation_has_a_summary(document: dict[str, Any]) -> None:
    missing = [
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if not operation.get("description") and not operation.get("summary")
    ]
    assert missing == []
