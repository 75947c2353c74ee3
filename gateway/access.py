"""Who may call which gateway route: chat for everyone allowed in, reports per tenant, admin.

Three kinds of route (README, "Who may call what"):

- **chat** (``/v1/...``): open on loopback when ``ROUTER_API_KEYS`` is unset, any
  key otherwise (:class:`gateway.auth.ApiKeyMiddleware` checks it);
- **reports** (``/stats``, ``/usage``, ``GET /budget``, the dashboard): a key
  sees its own user's and team's figures (:func:`tenant_of`); an admin key (its
  user named in ``ROUTER_ADMIN_USERS``) sees everyone's, or one tenant's it asks for;
- **admin** (``PUT /budget/...``, ``/metrics``, which shows every tenant's budgets):
  an admin key only (:func:`require_admin`).

Without ``ROUTER_API_KEYS`` nobody is known, so reports and admin routes are
closed (403, saying what to set), while chat stays open: ``hybrid-router serve``
binds to loopback unless told otherwise. Budgets can still be set in-process
with ``hybrid-router budget``.
"""

from __future__ import annotations

from starlette.requests import Request

from gateway.auth import MISSING_KEY, AuthenticationError, PermissionDeniedError, caller
from gateway.chat_request import GatewayRequestError
from state.api_keys import ApiKeyIdentity
from state.ledger import NAME_MAX_CHARS
from state.reporting.tenants import Tenant
from state.settings import Settings

CONFIGURE_KEYS = (
    "set ROUTER_API_KEYS=<key>:<user>[:<team>] (comma-separated, one entry per caller) and "
    "ROUTER_ADMIN_USERS=<user> for the admins, restart the router, and send "
    "'Authorization: Bearer <key>'"
)


def is_admin(who: ApiKeyIdentity | None, settings: Settings) -> bool:
    """Return whether a caller's key belongs to an admin (a user in ``ROUTER_ADMIN_USERS``)."""
    return who is not None and who.user in settings.router_admin_users


def _known_caller(request: Request, settings: Settings, what: str) -> ApiKeyIdentity:
    """Return the caller's identity, or refuse: no keys configured (403) or no key sent (401)."""
    if not settings.router_api_keys:
        raise PermissionDeniedError(
            f"{what} is closed because this router has no API keys, so it cannot tell who "
            f"asks: {CONFIGURE_KEYS}. Budgets can also be set on the router's host with "
            "'hybrid-router budget'"
        )
    who = caller(request)
    if who is None:  # the middleware lets no keyless request through: defence in depth
        raise AuthenticationError(MISSING_KEY, code="missing_api_key")
    return who


def require_admin(request: Request, settings: Settings, what: str) -> ApiKeyIdentity:
    """Return the admin who sent ``request``, or refuse it.

    Args:
        request: The request.
        settings: The router's settings (its keys and admins).
        what: The route, for the message (e.g. "PUT /budget").

    Returns:
        The admin's identity.

    Raises:
        PermissionDeniedError: No keys are configured, or the key is not an admin's.
    """
    who = _known_caller(request, settings, what)
    if not is_admin(who, settings):
        raise PermissionDeniedError(
            f"{what} needs an admin key: only the users named in ROUTER_ADMIN_USERS may "
            "call it; ask the operator"
        )
    return who


def _asked(request: Request, name: str) -> str | None:
    value = request.query_params.get(name) or None
    if value is not None and len(value) > NAME_MAX_CHARS:
        raise GatewayRequestError(
            f"'{name}' must be at most {NAME_MAX_CHARS} characters", param=name
        )
    return value


def tenant_of(request: Request, settings: Settings, what: str) -> Tenant | None:
    """Return whose figures a reporting route shows to this caller.

    ``?user=`` and ``?team=`` narrow the report: an admin may name anyone, a
    key only its own user and team.

    Args:
        request: The request (its key's identity and its query).
        settings: The router's settings (its keys and admins).
        what: The route, for the messages.

    Returns:
        The tenant the report covers; None for everyone (an admin who names nobody).

    Raises:
        PermissionDeniedError: No keys are configured, or a key asks for another
            user's or team's figures.
        GatewayRequestError: A name is too long.
    """
    who = _known_caller(request, settings, what)
    user, team = _asked(request, "user"), _asked(request, "team")
    if is_admin(who, settings):
        return Tenant(user, team) if user or team else None
    if user not in (None, who.user) or team not in (None, who.team):
        raise PermissionDeniedError(
            f"{what} shows a key its own user's ({who.user}) and team's "
            f"({who.team or 'none'}) figures only: leave out ?user= and ?team=, or name "
            "your own; an admin key (ROUTER_ADMIN_USERS) sees everyone's"
        )
    if user or team:
        return Tenant(user, team)
    return Tenant(who.user, who.team)
