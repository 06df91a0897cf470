"""The JSON response class of the API: orjson, which serializes datetimes and large lists fast."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse as StarletteJSONResponse


class JSONResponse(StarletteJSONResponse):
    """Starlette's JSON response (so that OpenAPI documents JSON bodies), rendered by orjson."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
