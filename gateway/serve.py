"""Serve the OpenAI-compatible gateway with uvicorn, on its own (without the graph API).

``langgraph dev`` serves the same routes beside the graph API (``langgraph.json``);
this is the lean way for production traffic and benchmarks.
"""

from __future__ import annotations

import socket

APP = "gateway.app:app"


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


def serve(host: str, port: int, workers: int) -> None:
    """Run the gateway until interrupted.

    The app is given to uvicorn as the import string ``gateway.app:app``, so
    ``workers > 1`` runs uvicorn's multi-process mode; each worker builds its own
    services on its first request (with no backend configured, each starts its
    own pair of local emulators).

    Args:
        host: Interface to listen on.
        port: Port to listen on; 0 picks a free one.
        workers: Number of worker processes (at least 1).
    """
    import uvicorn

    from state.settings import get_settings

    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if port == 0:
        port = _free_port(host or "0.0.0.0")
    base = gateway_url(host, port)
    print(f"Hybrid router gateway (OpenAI-compatible) at {base}", flush=True)
    print(f"  POST {base}/chat/completions", flush=True)
    print(f"  GET  {base}/models", flush=True)
    print(f"  workers: {workers}", flush=True)
    if get_settings().emulated:
        print(
            "  No LAMBDA_API_KEY and no GPU_ENDPOINTS set: answers come from local emulators.",
            flush=True,
        )
    uvicorn.run(
        APP,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
