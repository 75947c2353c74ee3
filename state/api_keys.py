"""The router's own API keys (``ROUTER_API_KEYS``): who each key belongs to.

Parsed from ``key:user[:team]`` entries; only each key's SHA-256 digest is
kept, so a key never sits in memory as text, in a repr or in an error message.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler, SecretStr, ValidationError
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, InitErrorDetails, PydanticCustomError, core_schema

from state.ledger import NAME_MAX_CHARS

_REDACTED = "**********"


@dataclass(frozen=True, slots=True)
class ApiKeyIdentity:
    """Who an API key belongs to: a user and, optionally, a team."""

    user: str
    team: str | None = None


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _keys_error(message: str) -> ValidationError:
    """Build a validation error that shows ``message`` but never the offending input."""
    return ValidationError.from_exception_data(
        "RouterApiKeys",
        [
            InitErrorDetails(
                type=PydanticCustomError("router_api_keys", message),
                loc=(),
                input=_REDACTED,
            )
        ],
    )


class RouterApiKeys:
    """The gateway's API keys (``ROUTER_API_KEYS``) and whom each one identifies.

    The setting is comma-separated ``key:user[:team]`` entries, e.g.
    ``ROUTER_API_KEYS=sk-3f9a...:alice:search,sk-77c1...:bob``. Keys are kept
    only as SHA-256 digests, so neither ``repr``, ``str``, a settings dump nor
    a validation error can show one. Empty (the default): authentication is off.
    """

    __slots__ = ("_by_digest",)

    def __init__(self, entries: Mapping[str, ApiKeyIdentity] | None = None) -> None:
        """Keep the digests of ``entries`` (key -> identity); no entries means auth off."""
        self._by_digest = {_digest(key): who for key, who in (entries or {}).items()}

    @classmethod
    def parse(cls, text: str) -> RouterApiKeys:
        """Parse ``key:user[:team],...``; blank entries are skipped.

        Args:
            text: The setting's value.

        Returns:
            The keys.

        Raises:
            ValidationError: An entry is malformed; the message names the entry by
                position and never quotes it (it may hold a key).
        """
        entries: dict[str, ApiKeyIdentity] = {}
        positions: dict[str, int] = {}
        raw = [part.strip() for part in text.split(",")]
        present = [part for part in raw if part]
        fix = (
            "; give comma-separated key:user[:team] entries, e.g. "
            "ROUTER_API_KEYS=<key1>:alice:search,<key2>:bob (a key holds no ':', ',' "
            f"or spaces; names are 1 to {NAME_MAX_CHARS} characters)"
        )
        for number, entry in enumerate(present, start=1):
            where = f"ROUTER_API_KEYS entry {number} of {len(present)}"
            parts = [part.strip() for part in entry.split(":")]
            if len(parts) not in (2, 3):
                raise _keys_error(
                    f"{where} has {len(parts)} ':'-separated parts instead of 2 or 3{fix}"
                )
            key, user = parts[0], parts[1]
            team = parts[2] if len(parts) == 3 else None
            if not key or any(c.isspace() for c in key):
                raise _keys_error(f"{where} has an empty key or a key with spaces{fix}")
            for label, name in (("user", user), ("team", team)):
                if name is not None and not 1 <= len(name) <= NAME_MAX_CHARS:
                    raise _keys_error(f"{where} has an empty or over-long {label} name{fix}")
            if key in positions:
                raise _keys_error(
                    f"{where} repeats the key of entry {positions[key]}: give each key once"
                )
            positions[key] = number
            entries[key] = ApiKeyIdentity(user=user, team=team)
        return cls(entries)

    def identify(self, key: str) -> ApiKeyIdentity | None:
        """Return the identity of ``key``, or None when it is not one of ours.

        Args:
            key: The key a caller presented.

        Returns:
            Its user and team, or None.
        """
        return self._by_digest.get(_digest(key))

    def __len__(self) -> int:
        """Return how many keys there are."""
        return len(self._by_digest)

    def __bool__(self) -> bool:
        """True when at least one key is set (authentication is on)."""
        return bool(self._by_digest)

    def __eq__(self, other: object) -> bool:
        """Two key sets are equal when they hold the same keys for the same identities."""
        return isinstance(other, RouterApiKeys) and self._by_digest == other._by_digest

    def __hash__(self) -> int:
        """Hash by content (the digests and identities)."""
        return hash(frozenset(self._by_digest.items()))

    def __repr__(self) -> str:
        """Say how many keys there are, never which."""
        return f"RouterApiKeys({len(self)} keys)"

    @classmethod
    def _validate(cls, value: Any) -> RouterApiKeys:
        if isinstance(value, RouterApiKeys):
            return value
        if value is None:
            return cls()
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str):
            return cls.parse(value)
        raise _keys_error(
            f"ROUTER_API_KEYS must be a string of key:user[:team] entries, "
            f"got a {type(value).__name__}"
        )

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        """Validate from a string (or an instance); serialize as a redacted string."""
        return core_schema.no_info_plain_validator_function(
            cls._validate,
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda keys: _REDACTED if keys else ""
            ),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """Describe the setting as a write-only secret string."""
        return {"type": "string", "format": "password", "writeOnly": True}
