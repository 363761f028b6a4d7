"""Caption tokenizers for the foveated captioner: the LM's own, or a byte-level one built in.

`load_tokenizer(spec)`: a local folder (the LM's folder, e.g. SmolLM2-135M) is read with transformers'
`AutoTokenizer` (local files only, never a download); "bytes" gives `ByteTokenizer` (UTF-8 bytes 0..255 plus
pad, bos and eos), the tokenizer of the tiny random LM used by the tests and on machines without weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from shardyard.errors import ConfigError

__all__ = ["BYTES", "ByteTokenizer", "CaptionTokenizer", "HFTokenizer", "load_tokenizer"]

BYTES = "bytes"


class CaptionTokenizer(Protocol):
    """What the captioner needs from a tokenizer."""

    vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without bos/eos."""

    def decode(self, ids: list[int]) -> str:
        """Text of `ids`, special tokens dropped."""


@dataclass(frozen=True)
class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255; 256 pad, 257 bos, 258 eos (vocab 259)."""

    vocab_size: int = 259
    pad_id: int = 256
    bos_id: int = 257
    eos_id: int = 258

    def encode(self, text: str) -> list[int]:
        """Bytes of `text` (UTF-8)."""
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        """Text of the byte ids (ids >= 256 dropped; invalid UTF-8 replaced)."""
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", "replace")


class HFTokenizer:
    """A transformers tokenizer behind the `CaptionTokenizer` protocol (pad falls back to eos)."""

    def __init__(self, tok: Any) -> None:
        self.tok = tok
        self.vocab_size = len(tok)
        self.eos_id = tok.eos_token_id if tok.eos_token_id is not None else 0
        self.bos_id = tok.bos_token_id if tok.bos_token_id is not None else self.eos_id
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else self.eos_id

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` without special tokens."""
        return list(self.tok.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        """Text of `ids`, special tokens dropped."""
        return self.tok.decode(ids, skip_special_tokens=True)


def load_tokenizer(spec: str) -> CaptionTokenizer:
    """"bytes" -> `ByteTokenizer`; a local folder -> its `AutoTokenizer`. Raises ConfigError otherwise."""
    if spec == BYTES:
        return ByteTokenizer()
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"tokenizer {spec!r}: not 'bytes' and not a local folder (shardyard never downloads)")
    from transformers import AutoTokenizer

    try:
        return HFTokenizer(AutoTokenizer.from_pretrained(str(folder), local_files_only=True))
    except (OSError, ValueError) as e:
        raise ConfigError(f"no tokenizer in {folder}: {str(e).splitlines()[0][:200]}") from None
