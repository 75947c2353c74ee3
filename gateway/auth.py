"""API-key authentication for the gateway's routes and for the LangGraph graph API.

One setting, ``ROUTER_API_KEYS`` (comma-separated ``key:user[:team]``
entries, :class:`state.api_keys.RouterApiKeys`), guards both doors:

- :class:`ApiKeyMiddleware` wraps the gateway's Starlette app, so every route,
  including sub-apps mounted later (the dashboard at ``/dashboard``), needs
  ``Authorization: Bearer <key>``; a missing or wrong key is answered 401 with
  an OpenAI error object and ``WWW-Authenticate: Bearer``. ``/health`` (and
  the LangGraph server's ``/ok``) stay open, as do CORS preflights
  (``OPTIONS``, which carry no credentials) and the LangGraph server's
  in-process loopback calls (``root_path`` ``/noauth``, which no client can
  set). The caller's identity is left in the request scope
  (:func:`caller`): the chat route puts its user and team into the graph
  input, so budgets and the ledger see who asked.
- :data:`auth` is the LangGraph server's custom auth (``langgraph.json``:
  ``"auth": {"path": "./gateway/auth.py:auth"}``): its ``authenticate``
  handler maps the same keys to an identity (the user; the team in
  ``metadata``), and a run created through the graph API gets that user and
  team written into its input.

Under ``langgraph dev`` / ``langgraph up`` the gateway app's middleware
becomes the server's global middleware, so the graph API is guarded twice by
the same keys. With ``ROUTER_API_KEYS`` unset both doors let everyone in, and
the routes themselves refuse what needs to know who asks (reports, budgets,
metrics: :mod:`gateway.access`).

Keys are compared by their SHA-256 digests and never logged, stored or echoed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qs

from langgraph_sdk import Auth
from starlette.requests import HTTPConnection, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.openai_format import error_body
from state.api_keys import ApiKeyIdentity, RouterApiKeys
from state.errors import RouterError
from state.settings import get_settings

KeysProvider = Callable[[], Awaitable[RouterApiKeys]]

CALLER_SCOPE_KEY = "hybrid_router.caller"
"""Where :class:`ApiKeyMiddleware` leaves the caller's identity in the ASGI scope."""

OPEN_PATHS = frozenset({"/health", "/ok"})
"""Paths served without a key (liveness probes: they show no usage or money)."""

REALM = 'Bearer realm="hybrid-router"'


class AuthenticationError(RouterError):
    """The request carries no API key, or one the router does not know."""

    status_code = 401
    error_type = "invalid_request_error"

    def __init__(self, message: str, *, code: str) -> None:
        """Keep the message (never the key) and the OpenAI error code."""
        super().__init__(message)
        self.code = code


class PermissionDeniedError(RouterError):
    """The caller's key does not allow what the request asks for."""

    status_code = 403
    code = "permission_denied"
    error_type = "invalid_request_error"


MISSING_KEY = (
    "this router needs an API key: send the header 'Authorization: Bearer <key>' "
    "with a key from the operator's ROUTER_API_KEYS"
)
WRONG_KEY = (
    "the API key in the Authorization header is not one of this router's keys: "
    "check it, or ask the operator for a key"
)


def bearer_key(authorization: str | None) -> str | None:
    """Return the key of an ``Authorization: Bearer <key>`` header, or None.

    Args:
        authorization: The header's value, if any.

    Returns:
        The key (stripped), or None when the header is missing, empty or not Bearer.
    """
    if not authorization:
        return None
    scheme, _, key = authorization.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return None
    return key


def identify(keys: RouterApiKeys, authorization: str | None) -> ApiKeyIdentity:
    """Return the identity of the key in ``authorization``.

    Args:
        keys: The router's keys (non-empty: authentication is on).
        authorization: The ``Authorization`` header's value, if any.

    Returns:
        The key's user and team.

    Raises:
        AuthenticationError: No key was sent, or it is not one of ``keys``.
    """
    key = bearer_key(authorization)
    if key is None:
        raise AuthenticationError(MISSING_KEY, code="missing_api_key")
    who = keys.identify(key)
    if who is None:
        raise AuthenticationError(WRONG_KEY, code="invalid_api_key")
    return who


def caller(connection: HTTPConnection) -> ApiKeyIdentity | None:
    """Return who sent a request, as :class:`ApiKeyMiddleware` found it.

    Args:
        connection: The request (or WebSocket).

    Returns:
        The key's identity; None when authentication is off (or on an open path
        reached without a valid key).
    """
    who = connection.scope.get(CALLER_SCOPE_KEY)
    return who if isinstance(who, ApiKeyIdentity) else None


DASHBOARD = "/dashboard"
DASHBOARD_LOGIN = f"{DASHBOARD}/login"
DASHBOARD_COOKIE = "router_dashboard_key"
_LOGIN_HTML = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>hybrid-router dashboard: sign in</title>
<style>body{{font:16px system-ui,sans-serif;display:grid;place-items:center;height:90vh}}
form{{display:grid;gap:.6rem;min-width:20rem}}input,button{{font:inherit;padding:.4rem}}
.wrong{{color:#b3261e}}</style></head><body>
<form method="post" action="/dashboard/login"><h1>hybrid-router</h1>
<label for="key">API key (one of the operator's ROUTER_API_KEYS)</label>
<input id="key" name="key" type="password" autocomplete="current-password" required>
{wrong}<button type="submit">Open the dashboard</button></form></body></html>"""


async def _login_page(send: Send, *, wrong: bool) -> None:
    """Answer a browser without a valid key with the dashboard's sign-in form (401)."""
    note = '<p class="wrong">That key is not one of this router\'s keys.</p>' if wrong else ""
    body = _LOGIN_HTML.format(wrong=note).encode()
    headers = [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"www-authenticate", REALM.encode()),
        (b"cache-control", b"no-store"),
    ]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ApiKeyMiddleware:
    """Pure ASGI middleware: every HTTP and WebSocket request needs a known key.

    Streaming responses pass through untouched (no ``BaseHTTPMiddleware``).
    """

    def __init__(
        self,
        app: ASGIApp,
        keys: KeysProvider,
        open_paths: frozenset[str] = OPEN_PATHS,
    ) -> None:
        """Wrap ``app``.

        Args:
            app: The application to guard.
            keys: Returns the current keys (an empty set turns authentication off).
            open_paths: Paths served without a key.
        """
        self.app = app
        self.keys = keys
        self.open_paths = open_paths

    def _exempt(self, scope: Scope) -> bool:
        root_path = scope.get("root_path") or ""
        if root_path == "/noauth" or root_path.startswith("/noauth/"):
            return True  # the LangGraph server's in-process loopback
        return scope["type"] == "http" and scope.get("method") == "OPTIONS"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Let the request through with its caller's identity, or answer 401."""
        if scope["type"] not in ("http", "websocket") or self._exempt(scope):
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        open_path = scope.get("path") in self.open_paths
        try:
            keys = await self.keys()
        except Exception as exc:
            if open_path:
                await self.app(scope, receive, send)
                return
            await self._refuse(scope, receive, send, exc, request_id)
            return
        if not keys:
            await self.app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        path = scope.get("path", "")
        on_dashboard = path == DASHBOARD or path.startswith(f"{DASHBOARD}/")
        if on_dashboard and path == DASHBOARD_LOGIN and scope.get("method") == "POST":
            await self._log_in(scope, receive, send, keys)
            return
        authorization = connection.headers.get("authorization")
        if authorization is None and on_dashboard and connection.cookies.get(DASHBOARD_COOKIE):
            # a browser cannot send a Bearer header with a page: the login form's cookie
            authorization = f"Bearer {connection.cookies[DASHBOARD_COOKIE]}"
        try:
            who = identify(keys, authorization)
        except AuthenticationError as exc:
            if open_path:
                await self.app(scope, receive, send)
                return
            if on_dashboard and scope.get("method") == "GET" and "/static/" not in path:
                if not path.endswith("/data"):
                    await _login_page(send, wrong=authorization is not None)
                    return
            await self._refuse(scope, receive, send, exc, request_id)
            return
        scope[CALLER_SCOPE_KEY] = who
        await self.app(scope, receive, send)

    async def _log_in(
        self, scope: Scope, receive: Receive, send: Send, keys: RouterApiKeys
    ) -> None:
        """Check the login form's key; on success set the dashboard cookie and go to the page."""
        body = await Request(scope, receive).body()
        fields = parse_qs(body[:4096].decode("utf-8", "replace"))
        key = (fields.get("key") or [""])[0].strip()
        if not key or keys.identify(key) is None:
            await _login_page(send, wrong=True)
            return
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        cookie = f"{DASHBOARD_COOKIE}={key}; Path={DASHBOARD}; HttpOnly; SameSite=Strict{secure}"
        headers = [(b"location", f"{DASHBOARD}/".encode()), (b"set-cookie", cookie.encode())]
        await send({"type": "http.response.start", "status": 303, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, exc: Exception, request_id: str
    ) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        status, body = error_body(exc, request_id)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", request_id.encode()),
        ]
        if status == 401:
            error = 'error="invalid_token"' if getattr(exc, "code", "") == "invalid_api_key" else ""
            value = f"{REALM}, {error}" if error else REALM
            headers.append((b"www-authenticate", value.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


# --- the LangGraph server's custom auth ---------------------------------------------------

auth = Auth()
"""The graph API's authentication (``langgraph.json`` ``auth.path``)."""

_server_keys: RouterApiKeys | None = None


async def _keys_of_this_process() -> RouterApiKeys:
    """Return ``ROUTER_API_KEYS`` of this process's settings (read off the event loop once)."""
    global _server_keys
    if _server_keys is None:
        _server_keys = (await asyncio.to_thread(get_settings)).router_api_keys
    return _server_keys


ANONYMOUS: dict[str, Any] = {
    "identity": "anonymous",
    "display_name": "anonymous",
    "is_authenticated": True,
    "permissions": [],
    "metadata": {"team": None, "router_api_key": False},
}


@auth.authenticate
async def authenticate(authorization: str | None) -> dict[str, Any]:
    """Map the ``Authorization`` header to the key's identity (everyone when keys are unset).

    Args:
        authorization: The header's value, if any.

    Returns:
        ``{"identity": user, "metadata": {"team": ..., "router_api_key": True}, ...}``.

    Raises:
        Auth.exceptions.HTTPException: 401 when the key is missing or unknown.
    """
    keys = await _keys_of_this_process()
    if not keys:
        return dict(ANONYMOUS)
    try:
        who = identify(keys, authorization)
    except AuthenticationError as exc:
        raise Auth.exceptions.HTTPException(
            status_code=401, detail=exc.message, headers={"WWW-Authenticate": REALM}
        ) from None
    return {
        "identity": who.user,
        "display_name": who.user,
        "is_authenticated": True,
        "permissions": [],
        "metadata": {"team": who.team, "router_api_key": True},
    }


def identity_of(user: Any) -> ApiKeyIdentity | None:
    """Return the router identity of a LangGraph auth user, or None if no key made it.

    Args:
        user: ``ctx.user`` of an authorization handler.

    Returns:
        The key's user and team.
    """
    try:
        metadata = user["metadata"]
    except (KeyError, TypeError):
        return None
    if not isinstance(metadata, Mapping) or not metadata.get("router_api_key"):
        return None
    team = metadata.get("team")
    return ApiKeyIdentity(user=str(user.identity), team=team if isinstance(team, str) else None)


@auth.on
async def stamp_runs_with_the_caller(ctx: Auth.types.AuthContext, value: Any) -> None:
    """Allow every action; write the key's user and team into a new run's input.

    Args:
        ctx: The authenticated user, the resource and the action.
        value: The action's payload; for ``threads.create_run`` its ``kwargs.input``
            is the graph input.
    """
    if ctx.resource != "threads" or ctx.action != "create_run":
        return None
    who = identity_of(ctx.user)
    kwargs = value.get("kwargs") if isinstance(value, Mapping) else None
    graph_input = kwargs.get("input") if isinstance(kwargs, Mapping) else None
    if who is None or not isinstance(graph_input, dict):
        return None
    graph_input["user"] = who.user
    if who.team is None:
        graph_input.pop("team", None)
    else:
        graph_input["team"] = who.team
    return None
