"""Helpers shared by the benchmark scripts: statistics, machine facts, servers, LiteLLM setup.

Not a benchmark itself; the scripts beside it import it (``python benchmarks/X.py``
puts this folder on ``sys.path``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import ipaddress
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

BENCH_DIR = Path(__file__).resolve().parent
PACKAGES = (
    "langgraph",
    "langchain-core",
    "httpx",
    "sqlalchemy",
    "aiosqlite",
    "asyncpg",
    "uvicorn",
    "starlette",
    "uvloop",
    "httptools",
    "orjson",
    "pydantic",
    "litellm",
    "openai",
    "aiohttp",
    "fastapi",
    "pyinstrument",
)


# -- prompts --------------------------------------------------------------------------

HELLO = [{"role": "user", "content": "Hello!"}]
LONG_PROMPT = [
    {"role": "system", "content": "You are a careful senior engineer. Answer in markdown."},
    {
        "role": "user",
        "content": (
            "First, analyze the trade-offs between event sourcing and CRUD for an order "
            "service; then design the schema step by step, and finally write a Python "
            "function `def replay(events):` that rebuilds the state. Compare the two in a "
            "markdown table and justify the recommendation.\n"
        )
        * 8,
    },
]
VERY_LONG_PROMPT = [LONG_PROMPT[0], {"role": "user", "content": LONG_PROMPT[1]["content"] * 10}]
PROSE_PROMPT = [  # long text that none of the feature patterns match: every regex scans it all
    {
        "role": "user",
        "content": "The quarterly report covers revenue across regions, with notes on hiring "
        "and office moves. " * 200,
    }
]
PROMPTS = {"hello": HELLO, "long": VERY_LONG_PROMPT, "prose": PROSE_PROMPT}


# -- statistics -----------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 1]); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


Calls = Callable[[], Awaitable[Any]]
"""One path under test: an async call whose duration is measured."""


async def interleaved(paths: dict[str, Calls], calls: int, warmup: int) -> dict[str, list[float]]:
    """Time each path ``calls`` times, interleaved call by call (µs), after ``warmup`` calls.

    The order rotates each round, so no path always runs right after another;
    between calls the loop runs its other tasks, untimed (the GPU pool's probe,
    the emulators).
    """
    for fn in paths.values():
        for _ in range(warmup):
            await fn()
    out: dict[str, list[float]] = {name: [] for name in paths}
    names = list(paths)
    for i in range(calls):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            await paths[name]()
            out[name].append((time.perf_counter() - started) * 1e6)
            await asyncio.sleep(0)  # untimed: the probe and the emulator get their turn
    return out


def stats(values: list[float]) -> dict[str, float]:
    """p50 and mean of timings in µs."""
    return {"p50_us": percentile(values, 0.5), "mean_us": statistics.fmean(values)}


def summary(values: Sequence[float]) -> dict[str, float]:
    """p50, p99 and mean of latencies in ms."""
    return {
        "n": len(values),
        "p50_ms": percentile(values, 0.50),
        "p99_ms": percentile(values, 0.99),
        "mean_ms": statistics.fmean(values) if values else float("nan"),
    }


# -- the machine ----------------------------------------------------------------------


def _memory_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return None


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


def machine_info() -> dict[str, Any]:
    """Cores, memory, CPU, Python and the versions of the packages that matter here."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "packages": versions,
    }


def print_machine(info: Mapping[str, Any]) -> None:
    installed = {k: v for k, v in info["packages"].items() if v}
    print(
        f"machine: {info['cores']} cores, {info['memory_gib']} GiB, {info['cpu']}; "
        f"Python {info['python']}; load average {tuple(round(x, 2) for x in info['load_average'])}"
    )
    print("packages: " + ", ".join(f"{k} {v}" for k, v in installed.items()))


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"figures written to {os.path.relpath(path)}")


# -- loopback only --------------------------------------------------------------------


def _is_loopback(host: object) -> bool:
    if host in (None, "", "localhost", b"localhost"):
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    try:
        return ipaddress.ip_address(str(host).strip("[]").split("%")[0]).is_loopback
    except ValueError:
        return False


blocked: list[str] = []


def guard_loopback() -> None:
    """Refuse, in this process, any socket connection or name lookup off the loopback.

    An audit hook on ``socket.connect`` / ``socket.getaddrinfo``: it covers the
    standard library's sockets and asyncio's default loop (not uvloop, which
    connects in C); the blocked attempts are listed in ``blocked``.
    """

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "socket.connect":
            address = args[1]
            if isinstance(address, tuple) and not _is_loopback(address[0]):
                blocked.append(f"connect {address[0]}:{address[1]}")
                raise ConnectionRefusedError(f"benchmark: no network off loopback ({address})")
        elif event == "socket.getaddrinfo":
            if not _is_loopback(args[0]):
                blocked.append(f"getaddrinfo {args[0]!r}")
                raise socket.gaierror(socket.EAI_NONAME, f"benchmark: no lookups ({args[0]!r})")

    sys.addaudithook(hook)


# -- LiteLLM --------------------------------------------------------------------------

# No network at import or at run time: the bundled cost map, no telemetry.
LITELLM_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_TELEMETRY": "False",
    "LITELLM_LOG": "ERROR",
    "LITELLM_DONT_SHOW_FEEDBACK_BOX": "True",
}


def litellm_version() -> str | None:
    try:
        return importlib.metadata.version("litellm")
    except importlib.metadata.PackageNotFoundError:
        return None


def import_litellm() -> Any | None:
    """Import LiteLLM with telemetry, callbacks and the cost-map download off; None if absent."""
    if litellm_version() is None:
        return None
    os.environ.update(LITELLM_ENV)
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    litellm.callbacks = []
    litellm.success_callback = []
    litellm.failure_callback = []
    litellm.input_callback = []
    litellm.service_callback = []
    return litellm


# -- servers in subprocesses ----------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def venv_script(name: str) -> str:
    """The console script ``name`` of the interpreter running this benchmark."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(f"{name} is not installed beside {sys.executable}")
    return str(path)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


@contextlib.contextmanager
def server(
    name: str,
    command: Sequence[str],
    ready_url: str,
    *,
    env: Mapping[str, str],
    cwd: Path,
    log: Path,
    timeout_s: float = 120.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server in its own process group until the block ends; wait until it answers."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(command),
            env={**os.environ, **env},
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}; log:\n{_tail(log)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(ready_url, timeout=2).status_code < 500:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{name} did not answer {ready_url} in {timeout_s}s:\n{_tail(log)}"
                )
            time.sleep(0.2)
        yield process
    finally:
        _stop(process)


@contextlib.contextmanager
def emulator_process(port: int, work: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run `hybrid-router emulate` answering at once on loopback ``port``."""
    command = [
        venv_script("hybrid-router"),
        "emulate",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--ttft-ms",
        "0",
        "--tpot-ms",
        "0",
    ]
    ready = f"http://127.0.0.1:{port}/health"
    with server("emulator", command, ready, env={}, cwd=work, log=work / "emulator.log") as p:
        yield p


def emulator_settings(url: str, **overrides: Any) -> Any:
    """Return router settings with both backends on the emulator at ``url``."""
    from state.settings import Settings

    values: dict[str, Any] = {
        "lambda_api_key": "bench",
        "lambda_api_base": url,
        "gpu_endpoints": [url],
        "database_schema": None,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


def _tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""
