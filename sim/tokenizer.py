"""A deterministic stand-in tokenizer: one token per word or punctuation mark.

The same function counts prompt tokens for usage, /tokenize and the context-length check, and
the text generator emits exactly one such token per step, so re-tokenizing a completion gives
back its `completion_tokens`.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

VOCAB_SIZE = 32000

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Split text into words and single punctuation marks."""
    return _TOKEN_RE.findall(text)


def count_tokens(text: str) -> int:
    return len(_TOKEN_RE.findall(text))


def token_ids(text: str) -> list[int]:
    """Stable pseudo token ids (crc32 of each token), for /tokenize."""
    return [zlib.crc32(token.encode()) % VOCAB_SIZE for token in tokenize(text)]


def message_text(content: Any) -> str:
    """Text of an OpenAI message content: a string, null, or a list of parts of which text parts count."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    return ""


def apply_chat_template(messages: Sequence[Mapping[str, Any]]) -> str:
    """A trivial chat template ending with the assistant generation prompt, like a real model's."""
    turns = [f"<|{message['role']}|>\n{message_text(message.get('content'))}\n" for message in messages]
    return "".join(turns) + "<|assistant|>\n"
