"""TLS verification is never turned off: not in the code, not in the HTTP client it builds."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

from state.context import http_client
from state.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["graphs", "nodes", "backends", "emulator", "state", "cli", "gateway", "mcp_server"]
# every way Python's HTTP and TLS libraries are told not to check a certificate
UNVERIFIED = re.compile(
    r"verify\s*=\s*False|CERT_NONE|check_hostname\s*=\s*False|_create_unverified_context"
    r"|ssl\s*=\s*False|PYTHONHTTPSVERIFY|InsecureRequestWarning"
)


def test_no_code_turns_tls_verification_off():
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if UNVERIFIED.search(line)
    ]
    assert found == []


async def test_the_shared_http_client_checks_certificates_and_host_names():
    client = http_client(Settings(_env_file=None))
    try:
        context: ssl.SSLContext = client._transport._pool._ssl_context
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.check_hostname is True
    finally:
        await client.aclose()
