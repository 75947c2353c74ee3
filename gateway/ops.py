"""Operational routes of the gateway: health, stats, usage, budgets and metrics.

- ``GET /health``: each backend's and each GPU endpoint's state
  (:mod:`gateway.health`).
- ``GET /stats``: today's and this month's requests per backend (and share),
  requests by status, fallbacks, cost and the period's accounting (pool bill,
  idle share, savings) (:func:`state.reporting.usage.routing_stats`:
  calendar day and month in ``BUDGET_TIMEZONE``, the budgets' windows).
- ``GET /usage?days=N&group_by=day|model|backend|user``:
  :func:`state.reporting.usage.usage_of_last_days`: today and the ``N - 1`` days before.
- ``GET /budget``: :meth:`state.budgets.BudgetBook.status` of the caller's user and team.
- ``PUT /budget/{scope}/{key}``: set a user's or a team's daily and monthly limit (admin).
- ``GET /metrics``: Prometheus text (:mod:`gateway.metrics`), its budget gauges set
  from :func:`state.reporting.budget_status.every_budget_status` (admin).

Who sees what is :mod:`gateway.access`'s: the reports show a key its own user's
and team's figures (``?user=`` / ``?team=`` narrow them; an admin may name
anyone, and sees everyone's by default); without ``ROUTER_API_KEYS`` the
reports and the admin routes answer 403.

The routes read their parameters and answer JSON; every figure comes from
:mod:`state.reporting` or the budget book. Errors are OpenAI error objects,
like the chat route's. Nothing here shows a key: the serverless key is only
sent to the serverless API's ``/models``.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.access import require_admin, tenant_of
from gateway.chat_request import GatewayRequestError
from gateway.health import HealthCheck
from gateway.metrics import RouterMetrics
from gateway.openai_format import error_body
from state.context import Services
from state.ledger import NAME_MAX_CHARS
from state.reporting.budget_status import every_budget_status
from state.reporting.usage import GROUPINGS, GroupBy, routing_stats, usage_of_last_days

logger = logging.getLogger(__name__)

ServicesProvider = Callable[[], Awaitable[Services]]

MAX_DAYS = 366
_BUDGET_FIELDS = ("daily_usd", "monthly_usd")
_JSON = "application/json"


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=_JSON)


def _error(exc: BaseException) -> Response:
    request_id = uuid.uuid4().hex
    status, body = error_body(exc, request_id)
    return Response(
        body, status_code=status, media_type=_JSON, headers={"x-request-id": request_id}
    )


class Operations:
    """The operational routes, bound to the gateway's services provider and metrics."""

    def __init__(self, services: ServicesProvider, metrics: RouterMetrics) -> None:
        """Bind the provider of the router's services and the app's metrics.

        Args:
            services: Returns the services every route reads.
            metrics: The app's metrics (``GET /metrics``).
        """
        self._services = services
        self._metrics = metrics
        self._health = HealthCheck(services)

    # -- /health --------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        """Answer ``GET /health`` (:mod:`gateway.health`).

        ---
        summary: Health of the backends and of each GPU endpoint (no API key needed)
        tags: [Operations]
        responses:
          '200': {description: at least one backend is up (see gateway/health.py)}
          '503': {description: no backend is up (same body, status down)}
        """
        return await self._health.answer(request)

    # -- /stats ---------------------------------------------------------------------------

    async def stats(self, request: Request) -> Response:
        """Answer ``GET /stats``: today's and this month's routing, status and cost.

        ---
        summary: Routing split, fallbacks, requests by status and cost, today and this month
        tags: [Operations]
        responses:
          '200':
            description: >-
              {timezone, generated_at, today: PERIOD, month: PERIOD}, where PERIOD is
              {start, end, requests, by_backend: {serverless|gpu|none: {requests, share,
              cost_usd}}, by_status: {ok, failed, refused, ...}, fallbacks, fallback_rate,
              refused, budget_refusals, cost_usd, savings}; a request counts as a fallback
              when it tried more than one backend call; savings is
              state.reporting.accounting.cost_accounting (spend, the GPU pool's bill for its
              recorded hours, idle share, baselines, how each is computed).
          '403': {description: no API keys are configured, or another tenant was asked for}
        """
        try:
            services = await self._services()
            tenant = tenant_of(request, services.settings, "GET /stats")
            stats = await routing_stats(
                services.ledger, services.settings, services.catalog, services.clock(), tenant
            )
        except Exception as exc:
            return _error(exc)
        return _json(stats)

    # -- /usage ---------------------------------------------------------------------------

    async def usage(self, request: Request) -> Response:
        """Answer ``GET /usage``: the usage report of the last ``days`` days.

        ---
        summary: Usage report (requests, tokens, cost, latency, savings) of the last N days
        tags: [Operations]
        parameters:
          - {name: days, in: query, schema: {type: integer, minimum: 1, maximum: 366, default: 7},
             description: today and the days before it (calendar days in BUDGET_TIMEZONE)}
          - {name: group_by, in: query,
             schema: {type: string, enum: [day, model, backend, user], default: day}}
          - {name: user, in: query, schema: {type: string},
             description: one user's rows (a key may name only its own user)}
          - {name: team, in: query, schema: {type: string},
             description: one team's rows (a key may name only its own team)}
        responses:
          '200':
            description: >-
              {days, start, end, group_by, totals, groups: {KEY: figures}, savings}
              (state.reporting.usage.usage_of_last_days)
          '400': {description: bad days or group_by}
          '403': {description: no API keys are configured, or another tenant was asked for}
        """
        try:
            days, group_by = _usage_params(request)
            services = await self._services()
            tenant = tenant_of(request, services.settings, "GET /usage")
            report = await usage_of_last_days(
                services.ledger,
                services.settings,
                services.catalog,
                services.clock(),
                days,
                group_by,
                tenant,
            )
        except Exception as exc:
            return _error(exc)
        return _json(report)

    # -- /budget --------------------------------------------------------------------------

    async def budget(self, request: Request) -> Response:
        """Answer ``GET /budget``: the caller's budgets, their spend and their remainder.

        ---
        summary: The caller's budgets (global, user, team; day and month)
        tags: [Operations]
        parameters:
          - {name: user, in: query, schema: {type: string},
             description: the user whose budgets to show (a key may name only its own)}
          - {name: team, in: query, schema: {type: string},
             description: the team whose budgets to show (a key may name only its own)}
        responses:
          '200':
            description: >-
              {user, team, budgets: [{scope, key, period, window, limit_usd, spent_usd,
              reserved_usd, remaining_usd, used_fraction, resets_at}]}; an admin who names
              nobody gets every budget there is
          '403': {description: no API keys are configured, or another tenant was asked for}
        """
        try:
            services = await self._services()
            tenant = tenant_of(request, services.settings, "GET /budget")
            if tenant is None:
                budgets = await every_budget_status(
                    services.budgets, services.ledger, services.settings
                )
                return _json({"user": None, "team": None, "budgets": budgets})
            budgets = await services.budgets.status(tenant.user, tenant.team)
        except Exception as exc:
            return _error(exc)
        return _json({"user": tenant.user, "team": tenant.team, "budgets": budgets})

    async def set_budget(self, request: Request) -> Response:
        """Answer ``PUT /budget/{scope}/{key}``: set a user's or a team's budget.

        ---
        summary: Set a user's or a team's daily and monthly budget (USD; null = no limit)
        tags: [Operations]
        parameters:
          - {name: scope, in: path, required: true, schema: {type: string, enum: [user, team]}}
          - {name: key, in: path, required: true, schema: {type: string},
             description: the user's or team's name}
        requestBody:
          required: true
          content:
            application/json:
              schema:
                type: object
                properties:
                  daily_usd: {type: number, minimum: 0, nullable: true}
                  monthly_usd: {type: number, minimum: 0, nullable: true}
        responses:
          '200': {description: '{scope, key, daily_usd, monthly_usd, budgets: [...]}'}
          '400': {description: bad scope, name or body}
          '403': {description: not an admin key, or no API keys are configured}
        """
        try:
            services = await self._services()
            require_admin(request, services.settings, "PUT /budget")
            scope = request.path_params["scope"]
            key = request.path_params["key"]
            if scope not in ("user", "team"):
                raise GatewayRequestError(
                    f"a budget belongs to a 'user' or a 'team', not {scope!r:.40}: "
                    "PUT /budget/user/<name> or /budget/team/<name>",
                    param="scope",
                )
            if not 1 <= len(key) <= NAME_MAX_CHARS:
                raise GatewayRequestError(
                    f"the {scope}'s name must be 1 to {NAME_MAX_CHARS} characters", param="key"
                )
            daily, monthly = _budget_body(await request.body())
            await services.budgets.set_budget(scope, key, daily, monthly)
            windows = await services.budgets.status(**{scope: key})
        except Exception as exc:
            return _error(exc)
        return _json(
            {
                "scope": scope,
                "key": key,
                "daily_usd": daily,
                "monthly_usd": monthly,
                "budgets": [w for w in windows if w["scope"] == scope],
            }
        )

    # -- /metrics -------------------------------------------------------------------------

    async def metrics(self, request: Request) -> Response:
        """Answer ``GET /metrics``: this app's Prometheus metrics.

        ---
        summary: Prometheus metrics (requests, cost, tokens, fallbacks, latency, budgets)
        tags: [Operations]
        responses:
          '200': {description: Prometheus text exposition format}
          '403': {description: not an admin key, or no API keys are configured}
        """
        try:
            services = await self._services()
            require_admin(request, services.settings, "GET /metrics")
        except Exception as exc:
            return _error(exc)
        try:
            self._metrics.observe_pool(services.gpu_pool)
            windows = await every_budget_status(
                services.budgets, services.ledger, services.settings
            )
            self._metrics.set_budgets(windows)
        except Exception as exc:
            # the request counters are still worth serving
            logger.warning("metrics: could not refresh the budget gauges (%s)", type(exc).__name__)
        body, content_type = self._metrics.exposition()
        return Response(body, headers={"content-type": content_type})


def _usage_params(request: Request) -> tuple[int, GroupBy]:
    raw_days = request.query_params.get("days", "7")
    example = "e.g. GET /usage?days=7&group_by=model"
    try:
        days = int(raw_days)
    except ValueError:
        days = 0
    if not raw_days.strip().isdigit() or not 1 <= days <= MAX_DAYS:
        raise GatewayRequestError(
            f"'days' must be a whole number of days from 1 to {MAX_DAYS}, "
            f"got {raw_days!r:.40}; {example}",
            param="days",
        )
    group_by = request.query_params.get("group_by", "day")
    if group_by not in GROUPINGS:
        raise GatewayRequestError(
            f"'group_by' must be one of {', '.join(GROUPINGS)}, got {group_by!r:.40}; {example}",
            param="group_by",
        )
    return days, cast(GroupBy, group_by)


def _budget_body(raw: bytes) -> tuple[float | None, float | None]:
    """Parse ``{"daily_usd": x, "monthly_usd": y}`` (either may be null or left out)."""
    example = 'send e.g. {"daily_usd": 5, "monthly_usd": 100} (null: no limit)'
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise GatewayRequestError(
            f"the request body is not valid JSON; {example}", code="invalid_json"
        ) from None
    if not isinstance(body, Mapping):
        raise GatewayRequestError(f"the request body must be a JSON object; {example}")
    unknown = sorted(set(body) - set(_BUDGET_FIELDS))
    if unknown:
        raise GatewayRequestError(
            f"unknown field {unknown[0]!r:.40}: a budget has daily_usd and monthly_usd; {example}",
            param=str(unknown[0])[:40],
        )
    if not any(name in body for name in _BUDGET_FIELDS):
        raise GatewayRequestError(f"give daily_usd, monthly_usd or both; {example}")
    values: list[float | None] = []
    for name in _BUDGET_FIELDS:
        value = body.get(name)
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise GatewayRequestError(
                f"'{name}' must be a number of USD >= 0, or null for no limit; got {value!r:.40}",
                param=name,
            )
        values.append(None if value is None else float(value))
    return values[0], values[1]
