"""A closed-loop HTTP load generator for OpenAI-compatible chat endpoints (loopback only).

``concurrency`` workers each send one ``POST /v1/chat/completions`` at a time on
their own keep-alive connection, until ``--requests`` have been sent or
``--seconds`` have passed, whichever comes first. Every answer must be HTTP 200
with a ``chat.completion`` body (checked on each response). Prints one JSON line:
requests, errors, elapsed seconds, requests/s, p50/p99/mean latency (ms), and the
CPU seconds the load generator itself used.

Run on its own process so the server under test does not share its event loop:

    .venv/bin/python benchmarks/loadgen.py --url http://127.0.0.1:8000/v1 \\
        --concurrency 16 --requests 3000 --seconds 30

Two clients: ``raw`` (default) writes pre-built HTTP/1.1 requests on asyncio
streams and reads ``content-length`` or chunked answers, costing a few tens of
microseconds of CPU per request; ``httpx`` uses ``httpx.AsyncClient`` (several
times that). On a 2-core machine the load generator competes with the servers
for CPU, so the lean client disturbs the measurement least.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from urllib.parse import urlsplit

import httpx
import orjson

LOOPBACK = ("127.", "localhost", "::1", "[::1]")
DEFAULT_BODY = {
    "model": "llama3.1-8b-instruct",
    "messages": [{"role": "user", "content": "Hello!"}],
    "max_tokens": 1024,
}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of ``values`` (q in [0, 1])."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def check_answer(status: int, body: bytes) -> None:
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
    answer = orjson.loads(body)
    if answer.get("object") != "chat.completion" or not answer.get("choices"):
        raise RuntimeError(f"not a chat.completion: {body[:200]!r}")


class RawConnection:
    """One keep-alive HTTP/1.1 connection with a pre-built request."""

    def __init__(self, host: str, port: int, request: bytes) -> None:
        self.host, self.port, self.request = host, port, request
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = None
        chunked = False
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                close = True
        if length is not None:
            body = await self.reader.readexactly(length)
        elif chunked:
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                parts.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            body = b"".join(parts)
        else:
            body = await self.reader.read()
            close = True
        if close:
            await self.close()
        return status, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
            self.writer = self.reader = None


async def run(
    url: str,
    concurrency: int,
    requests: int,
    seconds: float,
    client: str,
    body: bytes,
    timeout_s: float = 30.0,
) -> dict[str, float | int | str]:
    parts = urlsplit(url.rstrip("/") + "/chat/completions")
    if not parts.hostname or not parts.hostname.startswith(LOOPBACK):
        raise SystemExit(f"refusing to send load to {url}: loopback addresses only")
    host, port = parts.hostname, parts.port or 80
    latencies: list[float] = []
    errors: list[str] = []
    sent = 0
    deadline = time.perf_counter() + seconds

    def take() -> bool:
        nonlocal sent
        if sent >= requests or time.perf_counter() >= deadline:
            return False
        sent += 1
        return True

    if client == "raw":
        request = (
            f"POST {parts.path} HTTP/1.1\r\nhost: {parts.netloc}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        ).encode() + body

        async def worker() -> None:
            conn = RawConnection(host, port, request)
            try:
                while take():
                    started = time.perf_counter()
                    try:
                        async with asyncio.timeout(timeout_s):
                            status, answer = await conn.send()
                        check_answer(status, answer)
                    except Exception as exc:  # counted, then the connection is renewed
                        errors.append(repr(exc)[:200])
                        await conn.close()
                        continue
                    latencies.append((time.perf_counter() - started) * 1000)
            finally:
                await conn.close()

        async def run_workers() -> None:
            await asyncio.gather(*(worker() for _ in range(concurrency)))

    else:
        target = f"{parts.scheme}://{parts.netloc}{parts.path}"
        headers = {"content-type": "application/json"}

        async def run_workers() -> None:
            limits = httpx.Limits(
                max_connections=concurrency, max_keepalive_connections=concurrency
            )
            async with httpx.AsyncClient(limits=limits, timeout=timeout_s) as http:

                async def worker() -> None:
                    while take():
                        started = time.perf_counter()
                        try:
                            response = await http.post(target, content=body, headers=headers)
                            check_answer(response.status_code, response.content)
                        except Exception as exc:
                            errors.append(repr(exc)[:200])
                            continue
                        latencies.append((time.perf_counter() - started) * 1000)

                await asyncio.gather(*(worker() for _ in range(concurrency)))

    cpu0 = time.process_time()
    started = time.perf_counter()
    try:  # a hard stop even if a server hangs: the last requests get their timeout
        async with asyncio.timeout(seconds + timeout_s + 5):
            await run_workers()
    except TimeoutError:
        errors.append("run stopped at its hard deadline")
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    return {
        "client": client,
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "elapsed_s": elapsed,
        "rps": len(latencies) / elapsed if elapsed > 0 else 0.0,
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "mean_ms": sum(latencies) / len(latencies) if latencies else float("nan"),
        "loadgen_cpu_s": cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--requests", type=int, default=2000, help="stop after this many")
    parser.add_argument("--seconds", type=float, default=30.0, help="or after this long")
    parser.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw")
    parser.add_argument("--body", help="JSON request body (default: a short Hello! chat)")
    args = parser.parse_args()
    body = args.body.encode() if args.body else orjson.dumps(DEFAULT_BODY)
    result = asyncio.run(
        run(
            args.url, args.concurrency, args.requests, args.seconds, args.client, body, args.timeout
        )
    )
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
