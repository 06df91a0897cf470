"""`/docs` (Swagger UI) served whole by the API: its script, style and icon come with the `fastapi-offline` package
and are served under `/docs-assets`, so that the page works without the Internet (FastAPI's own page loads them from
a CDN, and is blank on a network without one). There is no `/redoc`: ReDoc's bundle fetches its logo from its
vendor's site. API_DOCS=false turns `/docs` off, with `/openapi.json`."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

ASSETS = "/docs-assets"


def install_docs(app: FastAPI) -> None:
    """The page, and the assets it loads, on `app` (whose `openapi_url` it reads)."""
    app.mount(ASSETS, StaticFiles(packages=[("fastapi_offline", "static")]), name="docs-assets")
    title = f"{app.title} {app.version}"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=title,
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS}/favicon.png",
        )
