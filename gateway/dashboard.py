"""The dashboard: one self-refreshing page of spend, routing split, latency, savings and alerts.

:func:`create_dashboard` returns a Starlette sub-application meant to be mounted
at ``/dashboard`` (``Mount("/dashboard", app=create_dashboard(services))``):

- ``GET /``: the page (``static/dashboard.html``). Its scripts, styles and data
  are fetched with relative URLs (``data``, ``static/...``), so it works under
  any mount path, opened with the trailing slash (Starlette's router redirects
  ``/dashboard`` to ``/dashboard/``). It redraws itself from ``data`` every 10 s.
- ``GET /data?days=14``: everything the page draws, as JSON (see
  :func:`state.reporting.dashboard.dashboard_data`).
- ``GET /static/{name}``: the page's script and style sheet, and the vendored
  charting library. Only plain file names directly in ``gateway/static`` with a
  known type are served; anything else is a 404.

The charts are drawn by Chart.js 4.6.1 (MIT licence, ``static/chart.js.LICENSE.md``),
``dist/chart.umd.min.js`` of the npm package ``chart.js@4.6.1`` (sha256
``87364cc2b2a76a6684929e7d6b80b18a897794db38400caff1fcf1791c6925d2``), served from
the package: the page needs nothing but this server, and its Content-Security-Policy
forbids every other origin.

Every figure comes from :func:`state.reporting.dashboard.dashboard_data`; this
module serves the page, its files and that data. A key sees its own user's and
team's figures, an admin key everyone's (:func:`gateway.access.tenant_of`);
without ``ROUTER_API_KEYS`` the page and its data answer 403, saying what to set.
Importing it does no I/O; static files are read off the event loop on first use and kept in memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.access import tenant_of
from gateway.openai_format import error_payload
from state.context import Services
from state.reporting.dashboard import DEFAULT_DAYS, MAX_DAYS, dashboard_data
from state.reporting.tenants import Tenant

logger = logging.getLogger(__name__)

ServicesProvider = Callable[[], Awaitable[Services]]

STATIC_DIR = Path(__file__).resolve().parent / "static"
PAGE = "dashboard.html"

# What /static/{name} serves, by suffix; the page itself (.html) is served at / only,
# where its relative URLs resolve.
CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_JSON = "application/json"
_HTML = "text/html; charset=utf-8"
# Only this server: no CDN, no font service, no beacon. Chart.js sizes its canvases
# through the CSSOM (element.style), which style-src does not restrict.
_PAGE_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'self'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


@dataclass(frozen=True, slots=True)
class StaticFile:
    """A file of ``gateway/static`` held in memory."""

    body: bytes
    etag: str
    media_type: str


def _read_static(name: str) -> StaticFile | None:
    """Read ``gateway/static/<name>`` (blocking), or None when it is not a file there."""
    media_type = CONTENT_TYPES.get(Path(name).suffix.lower(), _HTML if name == PAGE else "")
    if not media_type or not _FILE_NAME.fullmatch(name):
        return None
    path = STATIC_DIR / name
    try:
        # a symbolic link out of the folder is not part of the package
        if path.resolve().parent != STATIC_DIR or not path.is_file():
            return None
        body = path.read_bytes()
    except OSError:
        return None
    return StaticFile(body, f'"{hashlib.sha256(body).hexdigest()[:20]}"', media_type)


def _json_error(status: int, message: str, code: str) -> Response:
    body = orjson.dumps({"error": {"message": message, "type": "dashboard_error", "code": code}})
    return Response(body, status_code=status, media_type=_JSON)


class Dashboard:
    """The dashboard's routes, bound to a services provider; built once per app."""

    def __init__(self, services: ServicesProvider, cache_s: float = 2.0) -> None:
        """Bind the provider of the router's services.

        Args:
            services: Returns the services the figures are read from.
            cache_s: How long one ``/data`` answer is reused (per ``days``), so that
                several open pages do not each re-read the ledger.
        """
        self._services = services
        self._cache_s = cache_s
        self._data: dict[tuple[int, Tenant | None], tuple[float, bytes]] = {}
        self._files: dict[str, StaticFile] = {}

    async def _file(self, name: str) -> StaticFile | None:
        cached = self._files.get(name)
        if cached is None:
            cached = await asyncio.to_thread(_read_static, name)
            if cached is not None:
                self._files[name] = cached
        return cached

    @staticmethod
    def _send(request: Request, file: StaticFile, headers: dict[str, str]) -> Response:
        headers = {**headers, "etag": file.etag}
        if request.headers.get("if-none-match") == file.etag:
            return Response(status_code=304, headers=headers)
        return Response(file.body, media_type=file.media_type, headers=headers)

    async def page(self, request: Request) -> Response:
        """Answer ``GET /``: the dashboard page.

        ---
        summary: The dashboard page (spend, routing split, latency, savings, alerts)
        tags: [Dashboard]
        responses:
          '200': {description: an HTML page that draws data and refreshes every 10 s}
          '403': {description: no API keys are configured (the message says what to set)}
        """
        try:
            tenant_of(request, (await self._services()).settings, "the dashboard")
        except Exception as exc:
            status, error = error_payload(exc, "dashboard")
            return _json_error(status, error["message"], str(error["code"]))
        file = await self._file(PAGE)
        if file is None:
            return _json_error(500, "the dashboard page is missing from the package", "missing")
        return self._send(request, file, _PAGE_HEADERS)

    async def static(self, request: Request) -> Response:
        """Answer ``GET /static/{name}``: the page's scripts, styles and charting library.

        ---
        summary: A static file of the dashboard (script, style sheet, Chart.js, licence)
        tags: [Dashboard]
        parameters:
          - {name: name, in: path, required: true, schema: {type: string}}
        responses:
          '200': {description: 'the file, with its content type'}
          '404': {description: no such file}
        """
        name = request.path_params["name"]
        file = await self._file(name) if name != PAGE else None
        if file is None:
            return _json_error(404, f"no static file {name[:60]!r}", "not_found")
        return self._send(
            request, file, {"cache-control": "no-cache", "x-content-type-options": "nosniff"}
        )

    async def data(self, request: Request) -> Response:
        """Answer ``GET /data``: everything the dashboard draws, as JSON.

        ---
        summary: Dashboard figures (daily spend vs budgets, split, latency, savings, alerts)
        tags: [Dashboard]
        parameters:
          - name: days
            in: query
            required: false
            description: calendar days to show, today included (1-366, default 14)
            schema: {type: integer, minimum: 1, maximum: 366, default: 14}
          - {name: user, in: query, schema: {type: string},
             description: one user's figures (a key may name only its own user)}
          - {name: team, in: query, schema: {type: string},
             description: one team's figures (a key may name only its own team)}
        responses:
          '200': {description: 'generated_at, range, emulated, spend, split, latency,
            totals, savings, budgets, alerts'}
          '400': {description: days is not an integer between 1 and 366}
          '403': {description: no API keys are configured, or another tenant was asked for}
          '500': {description: the ledger could not be read}
        """
        raw = request.query_params.get("days", str(DEFAULT_DAYS))
        try:
            days = int(raw)
        except ValueError:
            days = 0
        if not 1 <= days <= MAX_DAYS:
            return _json_error(
                400, f"days must be an integer from 1 to {MAX_DAYS}, got {raw[:20]!r}", "bad_days"
            )
        try:
            services = await self._services()
            tenant = tenant_of(request, services.settings, "the dashboard's data")
        except Exception as exc:
            status, error = error_payload(exc, "dashboard")
            return _json_error(status, error["message"], str(error["code"]))
        # one answer per range and tenant: a key never gets another tenant's cached figures
        cached = self._data.get((days, tenant))
        if cached is not None and time.monotonic() - cached[0] < self._cache_s:
            body = cached[1]
        else:
            try:
                figures = await dashboard_data(
                    services.ledger,
                    services.budgets,
                    services.settings,
                    services.catalog,
                    services.clock(),
                    days,
                    emulated=services.emulated,
                    tenant=tenant,
                )
            except Exception:
                logger.exception("the dashboard's figures could not be read")
                return _json_error(500, "the ledger could not be read; see the log", "internal")
            body = orjson.dumps(figures)
            self._data[(days, tenant)] = (time.monotonic(), body)
        return Response(body, media_type=_JSON, headers={"cache-control": "no-store"})


def create_dashboard(services: ServicesProvider, *, cache_s: float = 2.0) -> Starlette:
    """Build the dashboard's ASGI app, to be mounted (e.g. at ``/dashboard``).

    Building it does no I/O: files are read and figures gathered on request.

    Args:
        services: Returns the router's services for each request (for example
            :func:`state.context.default_services`).
        cache_s: How long one ``/data`` answer is reused; 0 re-reads the ledger
            on every request.

    Returns:
        A Starlette app with ``GET /``, ``GET /data`` and ``GET /static/{name}``.
    """
    dashboard = Dashboard(services, cache_s)
    app = Starlette(
        routes=[
            Route("/", dashboard.page, methods=["GET"]),
            Route("/data", dashboard.data, methods=["GET"]),
            Route("/static/{name}", dashboard.static, methods=["GET"]),
        ]
    )
    app.state.dashboard = dashboard
    return app
