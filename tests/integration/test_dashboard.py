"""The dashboard over real HTTP and in a real browser.

Traffic goes through the router graph to the two emulators of ``tests/conftest.py``;
the dashboard is mounted at ``/dashboard`` of an app served in this event loop
(uvicorn on a free port), and headless Chromium runs as a subprocess of the loop
(``asyncio.create_subprocess_exec``), so the loop keeps serving while it loads
the page. The figures the page's charts report having drawn are compared with
sums computed here, independently, from the ledger's rows.
"""

from __future__ import annotations

import asyncio
import html
import json
import math
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.types import ASGIApp, Receive, Scope, Send

from emulator.server import _EmbeddedServer
from gateway.auth import CALLER_SCOPE_KEY
from gateway.dashboard import STATIC_DIR, create_dashboard
from graphs.router import graph
from state.api_keys import ApiKeyIdentity
from state.context import Context, Services
from tests.conftest import Harness, run_cli

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ADMIN = "sk-router-root-0d15ea5e0d15ea5e:root"
HELLO = [{"role": "user", "content": "Hello! Say something short."}]
ANALYSIS = [
    {
        "role": "user",
        "content": "Compare event sourcing and CRUD step by step, with the trade-offs of each.",
    }
]
# What the page may load: itself, its three files and its data; nothing else.
PAGE_REQUESTS = {
    "/dashboard/",
    "/dashboard/static/dashboard.css",
    "/dashboard/static/chart.umd.min.js",
    "/dashboard/static/dashboard.js",
    "/dashboard/data",
}


class RecordPaths:
    """ASGI middleware that records every HTTP path asked of the server.

    Every request comes from the admin, as if the key middleware had found an admin
    key (the browser cannot send one; tests/integration/test_tenancy.py checks keys).
    """

    def __init__(self, app: ASGIApp, paths: list[str]) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.paths.append(scope["path"])
        scope[CALLER_SCOPE_KEY] = ApiKeyIdentity("root")
        await self.app(scope, receive, send)


@dataclass
class Served:
    url: str  # the page: http://127.0.0.1:<port>/dashboard/
    services: Services
    client: httpx.AsyncClient
    started: datetime  # just before the services (and their pool heartbeat) started
    paths: list[str] = field(default_factory=list)

    async def data(self, query: str = "") -> dict[str, Any]:
        response = await self.client.get(self.url + "data" + query)
        assert response.status_code == 200, response.text
        return response.json()


async def send_traffic(services: Services) -> None:
    """Requests to both backends, and a per-user budget that raises one 80 % alert."""
    context = Context(services=services)

    async def ask(**extra: Any) -> dict[str, Any]:
        return await graph.ainvoke({"messages": HELLO, "max_tokens": 8, **extra}, context=context)

    probe = await ask(force_backend="serverless", user="probe")
    # carol's next request costs what the probe cost: ~90 % of her daily budget
    await services.budgets.set_budget(
        "user", "carol", daily_usd=probe["cost_usd"] / 0.9, monthly_usd=None
    )
    await ask(force_backend="serverless", user="carol")
    await asyncio.gather(
        *(ask(force_backend="serverless", user="alice") for _ in range(3)),
        *(ask(force_backend="gpu", user="bob") for _ in range(4)),
        graph.ainvoke({"messages": ANALYSIS, "force_backend": "gpu"}, context=context),
        graph.ainvoke({"messages": ANALYSIS, "force_backend": "serverless"}, context=context),
    )


@pytest.fixture
async def served(both_up: Harness) -> AsyncIterator[Served]:
    started = datetime.now(UTC)
    services = await both_up.services(router_api_keys=ADMIN, router_admin_users="root")
    await send_traffic(services)

    async def provider() -> Services:
        return services

    paths: list[str] = []
    app = Starlette(routes=[Mount("/dashboard", app=create_dashboard(provider, cache_s=0))])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        RecordPaths(app, paths), log_level="warning", lifespan="off", log_config=None
    )
    server = _EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        assert not task.done(), task.result()
        await asyncio.sleep(0.002)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/dashboard/"
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            yield Served(url, services, client, started, paths)
    finally:
        server.should_exit = True
        await task
        sock.close()


async def chromium(tmp_path: Path, *args: str, virtual_ms: int = 8000) -> str:
    """Run headless Chromium without blocking the loop that serves the page; return stdout.

    Timers run on virtual time: ``virtual_ms`` of the page's clock pass in well under
    a second when the page is idle (fetches in flight hold the clock).
    """
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed (make install-test installs it)")
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    process = await asyncio.create_subprocess_exec(
        CHROMIUM,
        *CHROMIUM_FLAGS,
        f"--virtual-time-budget={virtual_ms}",
        f"--user-data-dir={profile}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, stderr.decode(errors="replace")[-3000:]
    return stdout.decode()


def drawn_summary(dom: str) -> dict[str, Any]:
    """Return the page's own account of what it drew (``<pre id="drawn">``)."""
    assert re.search(r"<body[^>]*\bdata-ready=\"true\"", dom), dom[:2000]
    found = re.search(r"<pre id=\"drawn\"[^>]*>(.*?)</pre>", dom, re.S)
    assert found, "no drawn summary"
    return json.loads(html.unescape(found.group(1)))


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = 0
    while (index + 1) / len(ordered) < q:
        index += 1
    return ordered[index]


@dataclass
class LedgerSums:
    requests: int
    by_backend: Counter[str]
    cost: dict[str, float]
    latency: dict[str, list[float]]


async def ledger_sums(services: Services) -> LedgerSums:
    rows = await services.ledger.rows()
    cost = {b: math.fsum(r.cost_usd for r in rows if r.backend == b) for b in ("serverless", "gpu")}
    latency = {b: [r.latency_ms for r in rows if r.backend == b] for b in ("serverless", "gpu")}
    return LedgerSums(len(rows), Counter(r.backend for r in rows), cost, latency)


def approx(value: float) -> Any:
    return pytest.approx(value, rel=1e-9, abs=1e-15)


async def test_data_equals_sums_of_the_ledger_rows(served: Served):
    ledger = await ledger_sums(served.services)
    data = await served.data()

    assert ledger.by_backend["serverless"] == 6
    assert ledger.by_backend["gpu"] == 5
    assert data["totals"]["requests"] == ledger.requests == 11
    for backend in ("serverless", "gpu"):
        assert data["split"][backend]["requests"] == ledger.by_backend[backend]
        assert data["split"][backend]["cost_usd"] == approx(ledger.cost[backend])
        assert data["latency"][backend]["requests"] == ledger.by_backend[backend]
        assert data["latency"][backend]["p50_ms"] == nearest_rank(ledger.latency[backend], 0.5)
        assert data["latency"][backend]["p95_ms"] == nearest_rank(ledger.latency[backend], 0.95)
    assert data["split"]["unanswered"] == {"requests": 0}
    assert ledger.cost["serverless"] > 0
    assert ledger.cost["gpu"] > 0

    spend = data["spend"]
    today = served.services.clock().astimezone(served.services.settings.zone).date()
    assert spend["days"] == [(today - timedelta(days=13 - i)).isoformat() for i in range(14)]
    assert sum(spend["serverless_usd"]) == approx(ledger.cost["serverless"])
    assert spend["serverless_usd"][-1] == approx(ledger.cost["serverless"])
    assert sum(spend["gpu_usd"]) == approx(ledger.cost["gpu"])
    assert spend["requests"][-1] == ledger.requests
    assert spend["month_to_date_serverless_usd"][-1] == approx(ledger.cost["serverless"])
    assert spend["daily_budget_usd"] == served.services.settings.lambda_daily_budget
    assert spend["monthly_budget_usd"] == served.services.settings.lambda_monthly_budget

    savings = data["savings"]
    assert savings["serverless_usd"] == approx(ledger.cost["serverless"])
    assert savings["actual_usd"] == approx(savings["serverless_usd"] + savings["gpu_bill_usd"])
    assert savings["all_gpu"]["saved_usd"] == approx(
        savings["all_gpu"]["usd"] - savings["actual_usd"]
    )

    # every serverless request reserved and settled against the global budgets
    budgets = {(w["scope"], w["period"]): w for w in data["budgets"]}
    assert budgets[("global", "day")]["spent_usd"] == approx(ledger.cost["serverless"])
    assert budgets[("global", "month")]["spent_usd"] == approx(ledger.cost["serverless"])
    assert budgets[("global", "day")]["reserved_usd"] == approx(0.0)

    (alert,) = data["alerts"]
    assert (alert["scope"], alert["key"], alert["period"], alert["threshold"]) == (
        "user",
        "carol",
        "day",
        0.8,
    )
    assert 0.8 * alert["limit_usd"] <= alert["spent_usd"] <= alert["limit_usd"]
    assert data["range"]["days"] == 14
    assert data["generated_at"]


async def test_days_selects_the_range_and_bad_values_are_refused(served: Served):
    data = await served.data("?days=3")
    assert len(data["spend"]["days"]) == len(data["spend"]["serverless_usd"]) == 3
    assert data["range"]["days"] == 3
    for bad in ("0", "367", "x", "1.5"):
        response = await served.client.get(served.url + "data", params={"days": bad})
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "bad_days"


async def test_static_files_have_their_types_and_nothing_else_is_served(served: Served):
    expected = {
        "chart.umd.min.js": "text/javascript; charset=utf-8",
        "dashboard.js": "text/javascript; charset=utf-8",
        "dashboard.css": "text/css; charset=utf-8",
        "chart.js.LICENSE.md": "text/markdown; charset=utf-8",
    }
    for name, media_type in expected.items():
        response = await served.client.get(served.url + "static/" + name)
        assert response.status_code == 200, name
        assert response.headers["content-type"] == media_type
        assert response.content == (STATIC_DIR / name).read_bytes()
        again = await served.client.get(
            served.url + "static/" + name, headers={"if-none-match": response.headers["etag"]}
        )
        assert again.status_code == 304
        assert again.content == b""
    assert (
        "MIT License" in (await served.client.get(served.url + "static/chart.js.LICENSE.md")).text
    )

    base = served.url.removeprefix("http://").split("/", 1)[0]
    for path in (
        "static/missing.js",
        "static/dashboard.html",  # the page is served at / only, where its URLs resolve
        "static/.hidden.js",
        "static/%2E%2E%2Fdashboard.py",
        "static/..%2F..%2Fpyproject.toml",
        "static/%2e%2e/app.py",
        "static/__init__.py",
    ):
        # sent as-is: no client-side normalisation of the dots
        response = await served.client.get(httpx.URL(f"http://{base}/dashboard/{path}"))
        assert response.status_code == 404, path

    # under the mount the page lives at /dashboard/ (its URLs are relative to that)
    bare = await served.client.get(served.url.rstrip("/"))
    assert bare.status_code == 307
    assert bare.headers["location"] == served.url

    page = await served.client.get(served.url)
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'self'" in page.headers["content-security-policy"]


async def test_the_page_needs_nothing_but_this_server(served: Served):
    page = (await served.client.get(served.url)).text
    references = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", page)
    assert references, "the page references no script or style sheet"
    for reference in references:
        assert not re.match(r"^(?:[a-z][a-z0-9+.-]*:)?//", reference, re.I), reference
        assert not reference.startswith("/"), f"{reference} would break under another mount"
    for name in ("dashboard.js", "dashboard.css"):
        assert not re.search(r"https?://|//[a-z]", (STATIC_DIR / name).read_text()), name


async def test_the_browser_draws_the_ledger_figures(served: Served, tmp_path: Path):
    ledger = await ledger_sums(served.services)
    data = await served.data()

    dom, month_dom = await asyncio.gather(
        chromium(tmp_path, "--dump-dom", "--window-size=1280,1600", served.url),
        # 25 s of the page's time: two refreshes after the first load
        chromium(tmp_path, "--dump-dom", served.url + "?days=7&view=month", virtual_ms=25_000),
    )

    assert re.search(r"<body[^>]*\bdata-ready=\"true\"", dom), dom[:2000]
    assert "data-error" not in dom
    drawn = drawn_summary(dom)
    assert drawn["generated_at"]
    assert drawn["refreshes"] == 1
    assert drawn["charts_built"] == 1

    spend = drawn["spend"]
    assert spend["labels"] == 14
    assert min(spend["size"]) > 200
    assert spend["bars"] >= 2  # today's serverless and GPU bars
    assert spend["view"] == "day"
    assert spend["points"] == 14
    assert spend["serverless_usd"] == approx(ledger.cost["serverless"])
    assert spend["gpu_usd"] == approx(ledger.cost["gpu"])
    assert spend["month_to_date_usd"] == approx(ledger.cost["serverless"])
    assert spend["daily_budget_usd"] == data["spend"]["daily_budget_usd"]

    split = drawn["split"]
    assert split["segments"] == 2
    assert split["cost_segments"] == 2
    assert split["requests"] == {"serverless": 6, "gpu": 5}
    for backend in ("serverless", "gpu"):
        assert split["requests"][backend] == ledger.by_backend[backend]
        assert split["cost_usd"][backend] == approx(ledger.cost[backend])

    latency = drawn["latency"]
    assert latency["bars"] == 4
    for backend in ("serverless", "gpu"):
        assert latency["p50_ms"][backend] == nearest_rank(ledger.latency[backend], 0.5) > 0
        assert latency["p95_ms"][backend] == nearest_rank(ledger.latency[backend], 0.95) > 0

    # the pool is charged from when the router started (its heartbeat), not for the whole
    # range; the bill grows while the pool stays up, so the page's is at least the one read before
    settings = served.services.settings
    hourly = settings.gpu_hourly_cost_usd
    generated = datetime.fromisoformat(drawn["generated_at"])
    up_hours = (generated - served.started).total_seconds() / 3600
    savings = drawn["savings"]
    assert savings["bars"] >= 2  # actual and all-GPU; all-serverless may be under a pixel
    assert savings["actual_serverless_usd"] == approx(ledger.cost["serverless"])
    bill = savings["actual_gpu_bill_usd"]
    assert 0 < data["savings"]["gpu_bill_usd"] <= bill
    assert bill <= len(settings.gpu_endpoints) * hourly * up_hours
    instances = data["savings"]["all_gpu"]["instances"]
    assert 0 < savings["all_gpu_usd"] <= instances * hourly * up_hours
    assert savings["how"] == {"lines": 5}
    assert "instance-hours" in dom
    assert savings["all_serverless_usd"] == approx(data["savings"]["all_serverless"]["usd"])

    assert drawn["alerts"] == {"rows": 1}
    table = re.search(r"<tbody id=\"alerts-body\">(.*?)</tbody>", dom, re.S)
    assert table, "no alerts table"
    cells = [html.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", table.group(1), re.S)]
    assert len(cells) == 7
    assert "Daily · user carol" in cells
    assert any(re.search(r">80\s%<", c.replace("\u00a0", " ")) for c in cells), cells
    cards = drawn["cards"]
    assert cards["requests"] == ledger.requests
    assert cards["today_usd"] == approx(ledger.cost["serverless"])
    assert cards["saved_vs_gpu_usd"] == approx(savings["all_gpu_usd"] - savings["actual_usd"])

    # refreshed in place (the charts were built once), on the other view of the spend
    # chart: month to date against the monthly budget
    later = drawn_summary(month_dom)
    assert later["refreshes"] >= 3
    assert later["charts_built"] == 1
    assert later["split"]["requests"] == split["requests"]
    month = later["spend"]
    assert month["view"] == "month"
    assert month["labels"] == 7
    assert month["bars"] == 0
    assert month["points"] == 2 * 7
    assert month["month_to_date_usd"] == approx(ledger.cost["serverless"])

    # offline: the browser asked this server for the page, its files and its data, nothing else
    assert set(served.paths) == PAGE_REQUESTS, served.paths


async def test_screenshot_of_the_page(served: Served, tmp_path: Path):
    ARTIFACTS.mkdir(exist_ok=True)
    target = ARTIFACTS / "dashboard.png"
    target.unlink(missing_ok=True)

    await chromium(tmp_path, f"--screenshot={target}", "--window-size=1280,1600", served.url)

    png = target.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (1280, 1600)
    assert len(png) > 20_000, f"{len(png)} bytes: the page looks blank"


def test_importing_the_dashboard_does_nothing():
    code = (
        "import sys, gateway.dashboard as d, state.context as c; "
        "assert not c._default_services; "
        "assert 'emulator' not in sys.modules; "
        "app = d.create_dashboard(c.default_services); "
        "assert not app.state.dashboard._files and not app.state.dashboard._data; print('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "ok", result.stderr


async def test_the_dashboard_draws_the_last_capacity_plan(served: Served, tmp_path: Path):
    page = ("--dump-dom", "--window-size=1280,1600", served.url)
    before = drawn_summary(await chromium(tmp_path, *page))
    assert before["plan"] == {"series": 0, "points": 0, "bound_points": 0, "best": None}

    # the planner on the ledger's own requests (the served ledger is the CLI's DATABASE_URL)
    policies = ("--policy", "router", "--policy", "all_gpu", "--policy", "all_serverless")
    done = await asyncio.to_thread(
        run_cli, tmp_path, "simulate", "--from-ledger", "--gpus", "0-2", *policies
    )
    assert done.returncode == 0, done.stderr
    plan = (await served.data())["capacity_plan"]
    ledger = await ledger_sums(served.services)
    assert plan["requests"] == ledger.requests  # every request of the traffic was answered
    assert plan["bound"]["gpus"] == [0, 1, 2]

    dom = await chromium(tmp_path, *page)
    drawn = drawn_summary(dom)["plan"]
    series = {s["policy"]: s for s in plan["series"]}
    assert set(series) == {"router", "all_gpu", "all_serverless"}
    assert drawn["series"] == 3
    assert drawn["bound_points"] == 3
    assert drawn["month_usd"]["router"] == approx(series["router"]["month_usd"])
    assert drawn["month_usd"]["all_gpu"] == approx(series["all_gpu"]["month_usd"])
    # all-serverless is a level line across the GPU counts
    assert drawn["month_usd"]["all_serverless"] == approx(series["all_serverless"]["month_usd"] * 2)
    best = plan["best"]
    # router 0-2, all-GPU 1-2, the level line's two ends, the bound, and the starred pick
    assert drawn["points"] == 3 + 2 + 2 + 3 + (best is not None)
    if best is not None:
        assert drawn["best"] == {"gpus": best["gpus"], "month_usd": approx(best["month_usd"])}
    caption = re.search(r'data-field="plan-caption"[^>]*>(.*?)</p>', dom, re.S)
    assert caption, "no plan caption"
    assert plan["recommendation"].replace("**", "")[:40] in html.unescape(caption.group(1))
