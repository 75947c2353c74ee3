"""Set or clear a routing override from the chat ("route the next 10 queries to GPU")."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage
from langgraph.config import get_config
from langgraph.runtime import Runtime

from state.context import Context, Services, resolve_services
from state.schemas import ChatState

# what the LangGraph server writes into every run's config (a caller cannot take it out)
_SERVER_KEYS = ("langgraph_auth_user_id", "langgraph_request_id")


def through_the_server() -> bool:
    """Return whether this run came through the LangGraph server's API (not in-process)."""
    try:
        configurable = get_config().get("configurable") or {}
    except RuntimeError:  # outside a run
        return False
    return any(key in configurable for key in _SERVER_KEYS)


def may_change_routing(services: Services, user: str | None, remote: bool) -> bool:
    """Return whether this caller may change routing.

    With API keys on, only the admin users may (``ROUTER_ADMIN_USERS``); without,
    only in-process callers (the command line, a Python caller): a run through
    the server's API cannot say who asks.
    """
    settings = services.settings
    if not settings.router_api_keys:
        return not remote
    return user is not None and user in settings.router_admin_users


async def change_routing(state: ChatState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Store the override in the ledger (every router process obeys it) and confirm it."""
    services = await resolve_services(runtime.context)
    params = state.get("params") or {}
    user = state.get("user")
    remote = through_the_server()
    if not may_change_routing(services, user, remote):
        if services.settings.router_api_keys:
            text = (
                "Only an admin may change routing (ROUTER_ADMIN_USERS); "
                f"{user or 'this caller'} may read usage and budgets but not route traffic."
            )
        else:
            text = (
                "Routing can only be changed by an admin, and this router has no API keys, "
                "so it cannot tell who asks: set ROUTER_API_KEYS=<key>:<user>[:<team>] and "
                "ROUTER_ADMIN_USERS=<user>, restart it, and ask again with the admin's key."
            )
        return {"messages": [AIMessage(text)]}
    overrides = services.overrides
    if params.get("action") == "clear":
        ended = await overrides.clear()
        text = (
            f"Back to normal routing: ended {ended} override(s)."
            if ended
            else "Routing was already normal: no override was active."
        )
        return {"messages": [AIMessage(text)]}
    override = await overrides.set(
        params["backend"],
        count=params.get("count"),
        condition=params.get("condition"),
        user=user,
        note=str((state["messages"][-1]).content)[:500],
    )
    others = len(await overrides.active()) - 1
    text = f"Done: {override.describe()}."
    if override.remaining is None:
        text += ' It stays until you say "back to normal routing".'
    if others > 0:
        text += f" {others} older override(s) are still active; the newest matching one wins."
    return {"messages": [AIMessage(text)]}
