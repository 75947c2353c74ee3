"""Each routing step as a plain function with a fake context: no network, no database."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from langgraph.runtime import Runtime
from langgraph.types import Command
from pydantic import SecretStr

from backends.catalog import get_catalog
from backends.errors import BackendError
from backends.providers import ServerlessProviders
from nodes.analyze_complexity import analyze_complexity
from nodes.check_budget import check_budget
from nodes.choose_backend import choose_backend
from nodes.generation import fail_over, failed_attempt
from nodes.select_model import select_model
from nodes.track_usage import track_usage
from state.budgets import BudgetWindow, Refused
from state.chat_fields import FieldError
from state.context import Context, Services
from state.errors import BackendRejectedError, BudgetExceededError
from state.overrides import Claim
from state.settings import Settings

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
CATALOG = get_catalog()


class FakePool:
    def __init__(self, spare: bool = True) -> None:
        self.spare = spare

    def __bool__(self) -> bool:
        return True

    def pick(self, *args: Any, **kwargs: Any) -> object:
        return object()

    def has_spare_capacity(self, *args: Any, **kwargs: Any) -> bool:
        return self.spare

    def admit(self, *args: Any, **kwargs: Any) -> object | None:
        return SimpleNamespace(affinity=False) if self.spare else None

    def unavailable_reason(self, *args: Any, **kwargs: Any) -> str:
        return "no GPU endpoint is up"

    def ensure_probing(self) -> None:
        pass

    async def ensure_probed(self) -> None:
        pass


class FakeReservations:
    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.settled: list[tuple[Any, float, Any]] = []

    def worst_case_usd(self, model: Any, spend: Any, price: Any = None) -> float:
        return float((price or model).cost_usd(spend.prompt_tokens, spend.output_tokens))

    async def hold(self, model: Any, spend: Any, price: Any = None, provider: Any = None) -> Any:
        amount = self.worst_case_usd(model, spend, price)
        if self.refuse:
            window = BudgetWindow("global", "", "day", "2026-12-01", 1.0, NOW)
            return Refused(window, 1.0, 0.0, amount)
        return {"id": "r1", "amount_usd": amount, "model": model.id, "provider": provider}

    async def hold_first(self, choices: Any, spend: Any) -> Any:
        for model, price, provider in choices:
            amount = self.worst_case_usd(model, spend, price)
            return {"id": "r2", "amount_usd": amount, "model": model.id, "provider": provider}
        return None

    async def settle(self, held: Any, cost: float, row: Any) -> list[Any]:
        self.settled.append((held, cost, row))
        return []


class FakeOverrides:
    def __init__(self, claim: Claim | None = None) -> None:
        self.claimed = claim

    async def claim(self, level: str, allowed: Any) -> Claim | None:
        return self.claimed


class FakeCache:
    async def get(self, key: str) -> None:
        return None

    async def put(self, key: str, answer: Any) -> None:
        pass


class FakeAlerts:
    def notify(self, crossings: Any) -> None:
        pass


def runtime(**settings: Any) -> Runtime[Context]:
    extra = {k: settings.pop(k) for k in ("pool", "reservations", "overrides") if k in settings}
    config = Settings(_env_file=None, lambda_api_key=SecretStr("k"), **settings)  # type: ignore[call-arg]
    services = Services(
        settings=config,
        catalog=CATALOG,
        http=None,  # type: ignore[arg-type]
        providers=ServerlessProviders(None, config.provider_specs()),  # type: ignore[arg-type]
        gpu_pool=extra.get("pool", FakePool()),
        ledger=None,  # type: ignore[arg-type]
        budgets=None,  # type: ignore[arg-type]
        reservations=extra.get("reservations", FakeReservations()),
        overrides=extra.get("overrides", FakeOverrides()),
        cache=FakeCache(),  # type: ignore[arg-type]
        alerts=FakeAlerts(),  # type: ignore[arg-type]
        clock=lambda: NOW,
    )
    return Runtime(context=Context(services=services))


async def planned(state: dict[str, Any], rt: Runtime[Context]) -> dict[str, Any]:
    """Run analyze_complexity and select_model, as the graph would."""
    state = {**state, **await analyze_complexity(state, rt)}  # type: ignore[arg-type]
    return {**state, **await select_model(state, rt)}  # type: ignore[arg-type]


HELLO = [{"role": "user", "content": "Hello!"}]


async def test_a_thread_run_gets_a_fresh_request_id_and_a_new_attempt_list():
    rt = runtime()
    leftover = {"messages": HELLO, "request_id": "old", "last_request_id": "old"}
    update = await analyze_complexity({**leftover, "response": {"x": 1}}, rt)
    assert update["request_id"] not in ("old", None)
    assert update["attempts"] is None
    assert update["response"] is None
    mine = await analyze_complexity({**leftover, "request_id": "new"}, rt)
    assert mine["request_id"] == "new"


async def test_tools_and_images_narrow_the_models():
    rt = runtime()
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}
    with_image = {"messages": [{"role": "user", "content": [image]}], "params": {"tools": tools}}
    state = await planned(with_image, rt)
    assert state["requires"] == {"tools": "tools", "vision": "messages"}
    assert all(CATALOG.by_id[m].supports(["tools", "vision"]) for m in state["candidates"].values())
    assert "gpu" not in state["candidates"]  # no GPU model takes images
    with pytest.raises(FieldError) as refused:
        await planned({**with_image, "model": "llama3.1-8b-instruct"}, rt)
    assert refused.value.param == "messages"


async def test_choose_backend_goes_to_the_gpu_or_to_the_budget_check():
    state = await planned({"messages": HELLO}, runtime())
    to_gpu = await choose_backend(state, runtime())
    assert isinstance(to_gpu, Command)
    assert to_gpu.goto == "generate_gpu"
    forced = await choose_backend({**state, "force_backend": "serverless"}, runtime())
    assert forced.goto == "check_budget"
    assert forced.update["backend"] == "serverless"
    told = runtime(overrides=FakeOverrides(Claim("serverless", "routing override #1")))
    overridden = await choose_backend(state, told)
    assert overridden.goto == "check_budget"
    assert overridden.update["backend_reason"] == "routing override #1"


async def serverless_state(rt: Runtime[Context]) -> dict[str, Any]:
    state = await planned({"messages": HELLO, "force_backend": "serverless"}, rt)
    command = await choose_backend(state, rt)  # type: ignore[arg-type]
    return {**state, **command.update}  # type: ignore[dict-item]


async def test_check_budget_holds_or_applies_the_policy():
    rt = runtime()
    held = await check_budget(await serverless_state(rt), rt)
    assert held.goto == "generate_serverless"
    assert held.update["reservation"]["id"] == "r1"

    over = runtime(reservations=FakeReservations(refuse=True), over_budget_policy="gpu")
    state = {**await serverless_state(over), "force_backend": None}
    moved = await check_budget(state, over)
    assert moved.goto == "generate_gpu"
    assert moved.update["backend"] == "gpu"
    assert "serverless" not in moved.update["allowed_backends"]

    assert moved.update["budget_refused"] is True  # counted in the reports

    # refused: the request goes to track_usage, which records it and raises the 402
    refusing = FakeReservations(refuse=True)
    strict = runtime(reservations=refusing, over_budget_policy="reject")
    state = {**await serverless_state(strict), "started_at": NOW.timestamp()}
    refused = await check_budget(state, strict)
    assert refused.goto == "track_usage"
    assert refused.update["budget_refused"] is True
    with pytest.raises(BudgetExceededError, match="daily budget") as raised:
        await track_usage({**state, **refused.update}, strict)
    assert raised.value.retry_after_s is not None
    assert raised.value.retry_after_s > 0
    ((hold, cost, row),) = refusing.settled
    assert (hold, cost) == (None, 0.0)
    assert (row.status, row.budget_refused, row.backend) == ("refused", True, None)
    assert row.model == state["candidates"]["serverless"]


def answered(backend: str, model: str) -> dict[str, Any]:
    return {
        "attempts": [
            {"backend": backend, "model": model, "status": "ok", "error": None, "latency_ms": 5.0}
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30},
    }


async def test_track_usage_never_charges_a_gpu_answer_to_the_serverless_hold():
    reservations = FakeReservations()
    rt = runtime(reservations=reservations)
    state = {
        **await serverless_state(rt),
        "started_at": NOW.timestamp(),
        "reservation": {"id": "r1", "amount_usd": 0.01, "model": "llama3.1-8b-instruct"},
    }
    await track_usage({**state, **answered("gpu", "llama3.1-8b-instruct")}, rt)
    await track_usage({**state, **answered("serverless", "llama3.1-8b-instruct")}, rt)
    (gpu_hold, gpu_cost, gpu_row), (_sl_hold, sl_cost, sl_row) = reservations.settled
    assert gpu_hold["id"] == "r1"
    assert gpu_cost == 0.0
    assert gpu_row.cost_usd > 0
    assert sl_cost == pytest.approx(CATALOG.by_id["llama3.1-8b-instruct"].cost_usd(10, 20))
    assert sl_row.cost_usd == sl_cost


async def test_a_client_error_ends_at_track_usage_and_is_raised_as_the_backends_4xx():
    rt = runtime()
    state = await serverless_state(rt)
    error = BackendError(
        "serverless",
        "m",
        "HTTP 400: bad tool_choice",
        status=400,
        body={"message": "bad tool_choice", "param": "tool_choice"},
    )
    command = fail_over(state, "serverless", failed_attempt("serverless", "m", error), error)
    assert command.goto == "track_usage"  # no fallback for the caller's own mistake
    transient = BackendError("serverless", "m", "HTTP 503", status=503, transient=True)
    other = fail_over(state, "serverless", failed_attempt("serverless", "m", transient), transient)
    assert other.goto == "generate_gpu"
    with pytest.raises(BackendRejectedError) as raised:
        await track_usage(
            {**state, "started_at": NOW.timestamp(), **command.update},
            rt,
        )
    assert raised.value.status_code == 400
    assert raised.value.param == "tool_choice"
