"""``hybrid-router serve``: the gateway, the dashboard and the graph API with uvicorn.

``langgraph dev`` serves the same routes beside the LangGraph server's graph API
(``langgraph.json``); this is the production server: several workers, no
LangGraph license, the ledger shared through ``DATABASE_URL``. With no backend
configured it starts two local emulators once, shared by every worker.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

APP = "gateway.standalone:app"
KEEP_ALIVE_S = 75
"""Seconds an idle client connection is kept open. Longer than the idle timeout of
clients and load balancers (httpx 5 s, most proxies 60 s), so they close an idle
connection first: with uvicorn's default of 5 s, a client that reused a connection
just as the server closed it got no answer to its request."""


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def gateway_url(host: str, port: int) -> str:
    """Return the gateway's base URL as a client on this machine would use it.

    Args:
        host: The interface the server listens on.
        port: Its port.

    Returns:
        ``http://<host>:<port>/v1`` (a wildcard host is shown as loopback).
    """
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "[::1]"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}/v1"


@contextlib.contextmanager
def local_emulators() -> Iterator[tuple[str, str]]:
    """Start the serverless and GPU emulators as processes; yield their base URLs."""
    from backends.catalog import get_catalog
    from state.settings import get_settings

    settings = get_settings()
    catalog = get_catalog()
    processes: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    try:
        for name in ("serverless", "gpu"):
            models = [m.served_name(name) for m in catalog.offered(name)]
            emulator_port = _free_port("127.0.0.1")
            processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "cli.main",
                        "emulate",
                        "--port",
                        str(emulator_port),
                        "--name",
                        name,
                        "--models",
                        ",".join(models),
                        "--ttft-ms",
                        str(settings.emulator_ttft_ms),
                        "--tpot-ms",
                        str(settings.emulator_tpot_ms),
                    ],
                    stdout=subprocess.DEVNULL,
                )
            )
            urls.append(f"http://127.0.0.1:{emulator_port}/v1")
        for url in urls:
            _wait_until_up(url.removesuffix("/v1") + "/health")
        yield urls[0], urls[1]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=10)


def _wait_until_up(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the local emulator at {url} did not start within {timeout_s:.0f} s")


@contextlib.contextmanager
def shared_metrics_dir(workers: int) -> Iterator[str | None]:
    """Give several workers one Prometheus multiprocess directory, empty at start.

    With one worker nothing changes (its registry is the whole server's). With
    more, ``PROMETHEUS_MULTIPROC_DIR`` is set for the workers: the operator's own
    directory if given (its old files are removed: counts restart with the
    server), or a new temporary one, removed when the server stops.

    Args:
        workers: Number of worker processes.

    Yields:
        The directory, or None with one worker.
    """
    from gateway.metrics import MULTIPROC_ENV

    if workers < 2:
        yield None
        return
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for old in path.glob("*.db"):
            old.unlink()
        yield str(path)
        return
    with tempfile.TemporaryDirectory(prefix="hybrid-router-metrics-") as made:
        os.environ[MULTIPROC_ENV] = made
        try:
            yield made
        finally:
            os.environ.pop(MULTIPROC_ENV, None)


def serve(host: str, port: int, workers: int) -> None:
    """Run the server until interrupted.

    The app is given to uvicorn as an import string, so ``workers > 1`` runs
    uvicorn's multi-process mode. With neither a serverless provider nor
    ``GPU_ENDPOINTS`` set, two local emulators are started first and every
    worker uses them. With several workers, ``/metrics`` answers every
    worker's totals (:func:`shared_metrics_dir`).

    Args:
        host: Interface to listen on.
        port: Port to listen on; 0 picks a free one.
        workers: Number of worker processes (at least 1).
    """
    import uvicorn

    from gateway.header_limits import HeaderLimitedProtocol
    from state.settings import get_settings

    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if port == 0:
        port = _free_port(host or "0.0.0.0")
    base = gateway_url(host, port)
    root = base.removesuffix("/v1")
    with contextlib.ExitStack() as stack:
        stack.enter_context(shared_metrics_dir(workers))
        if get_settings().emulated:
            serverless_url, gpu_url = stack.enter_context(local_emulators())
            os.environ.update(
                LAMBDA_API_KEY="emulated",
                LAMBDA_API_BASE=serverless_url,
                GPU_ENDPOINTS=gpu_url,
            )
            get_settings.cache_clear()
            print(
                "No serverless provider (SERVERLESS_PROVIDERS, LAMBDA_API_KEY) and no "
                f"GPU_ENDPOINTS set: started two local emulators (serverless {serverless_url}, "
                f"gpu {gpu_url}); every answer says it is emulated.",
                flush=True,
            )
        print(f"Hybrid router ({workers} worker{'s' if workers > 1 else ''}):", flush=True)
        print(f"  OpenAI-compatible gateway  {base}  (POST /chat/completions, GET /models)")
        closed = "" if get_settings().router_api_keys else "  (closed: no ROUTER_API_KEYS)"
        print(f"  dashboard                  {root}/dashboard{closed}")
        print(f"  graph API (langgraph-sdk)  {root}  (POST /runs/wait, /runs/stream)")
        print(f"  health                     {root}/health")
        print(f"  metrics                    {root}/metrics{closed}", flush=True)
        if closed:
            print(
                "Without ROUTER_API_KEYS the reports (/stats, /usage, /dashboard, /metrics) and "
                "the budget routes answer 403; `hybrid-router budget` sets budgets on this host.",
                flush=True,
            )
        uvicorn.run(
            APP,
            host=host,
            port=port,
            workers=workers,
            log_level="info",
            lifespan="on",
            http=HeaderLimitedProtocol,  # MAX_HEADER_BYTES, MAX_HEADER_COUNT: 431 past them
            timeout_keep_alive=KEEP_ALIVE_S,
            timeout_graceful_shutdown=10,
        )
