"""The app ``hybrid-router serve`` runs: the gateway's routes plus the graph API subset.

``langgraph dev`` mounts only the gateway (``gateway.app:app``) beside the
LangGraph server's own graph API; our production server adds the stateless
graph API of :mod:`gateway.graph_api` so it needs no LangGraph license.
"""

from __future__ import annotations

from starlette.applications import Starlette

from gateway.app import create_app
from gateway.graph_api import graph_api_routes
from state.context import default_services


def create_standalone_app() -> Starlette:
    """Build the gateway app with the graph API routes in front."""
    app = create_app()
    gateway = app.state.gateway
    app.router.routes[0:0] = graph_api_routes(default_services, after_run=gateway.observe_pool)
    return app


app = create_standalone_app()
