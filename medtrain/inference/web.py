"""The service's web page (`GET /`: drop an image, see the prediction and the model's card) and its
API docs (`/docs`, Swagger UI), served from files inside the installed packages: nothing loads from
a CDN or another origin, so both work on a hospital network without internet.

No `/redoc`: ReDoc's page shows its maker's logo from cdn.redoc.ly."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import FileResponse, HTMLResponse, Response

STATIC = Path(__file__).with_name("static")  # the page: index.html, app.js, style.css, favicon.svg
# Swagger UI 5 as released, shipped by the fastapi-offline package (not copied here).
DOCS_ASSETS = Path(fastapi_offline.__file__).with_name("static")
ASSETS_URL = "/docs/assets"

# Content-Security-Policy: the browser itself refuses anything from another origin. The page runs
# only its own script and style; its only other images are the server's base64 PNGs (data:).
# Swagger UI starts from an inline script and draws with inline styles.
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def with_policy(response: Response, policy: str) -> Response:
    response.headers["Content-Security-Policy"] = policy
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def add_web_routes(app: FastAPI) -> None:
    """Add to `app`: `GET /` (the page, its files under `/static`), `/docs` (Swagger UI, its files
    under `/docs/assets`, with `/docs/oauth2-redirect`) and `/favicon.ico`; none of
    them in the OpenAPI schema, none behind the API key (the page asks for it)."""
    app.mount("/static", StaticFiles(directory=STATIC), name="web-static")
    app.mount(ASSETS_URL, StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
    oauth2_redirect = app.swagger_ui_oauth2_redirect_url  # /docs/oauth2-redirect

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return with_policy(FileResponse(STATIC / "index.html"), PAGE_POLICY)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")  # behind a proxy that serves under a prefix
        html = get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - API docs",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}/static/favicon.svg",
            oauth2_redirect_url=f"{root}{oauth2_redirect}" if oauth2_redirect else None,
            init_oauth=app.swagger_ui_init_oauth,
            # No badge image from validator.swagger.io (another origin).
            swagger_ui_parameters={"validatorUrl": None, **(app.swagger_ui_parameters or {})},
        )
        return with_policy(html, DOCS_POLICY)

    if oauth2_redirect:

        @app.get(oauth2_redirect, include_in_schema=False)
        async def swagger_ui_redirect() -> HTMLResponse:
            return with_policy(get_swagger_ui_oauth2_redirect_html(), DOCS_POLICY)
