"""Data files of the site: JSON wrapped in a function call, with routing arrays as base64.

Browsers refuse `fetch()` of `file://` URLs, so every data file is a script that hands its JSON to a
callback the page defines (`window.<callback>(key, data)`), loaded by a `<script>` tag on demand.

Arrays travel as little-endian base64 (the page decodes them with typed arrays): expert ids as uint8 or
uint16 (the schema's own width), gate weights as float16 bits, co-activation as uint16 fixed point.
A 58-layer x top-8 target token is then 464 B of ids + 928 B of weights before base64, where JSON
numbers would take about three times as much.
"""

from __future__ import annotations

import base64
import json

import numpy as np


def b64(array: np.ndarray, dtype: str) -> str:
    """`array` as little-endian `dtype` bytes, base64 (no line breaks)."""
    return base64.b64encode(
        np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
    ).decode("ascii")


def expert_dtype(n_routed_experts: int) -> str:
    return "uint8" if n_routed_experts <= 256 else "uint16"


def js_call(callback: str, key: str, data) -> str:
    """`window.callback("key", {...});` with JSON that cannot close a `<script>` element early."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    # `</script>` inside a string would end an inline script; escaping '<' keeps the file safe anywhere.
    text = text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return f"window.{callback}({json.dumps(key)},{text});\n"


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet, inverted: printable stand-in character -> the byte it encodes.

    Byte-level tokenizers (GPT-2, DeepSeek, Qwen, OLMoE) store every byte as a printable character: the
    bytes that are printable Latin-1 stand for themselves, the other 68 (space, newline, controls, ...)
    are shifted to U+0100 onwards ('Ġ' is a space, 'Ċ' a newline). The same table as GPT-2's
    `bytes_to_unicode`, written here so the explorer needs no tokenizer.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    )
    chars = list(printable)
    shifted = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + shifted)
            shifted += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


BYTE_DECODER = _byte_decoder()
SENTENCEPIECE_SPACE = "\u2581"  # '▁': SentencePiece's word-start marker


def decode_token(piece: str | None) -> str | None:
    """A stored token string as the text it stands for ('Ġbank' -> ' bank', '▁bank' -> ' bank').

    Byte-level pieces are mapped back to bytes and read as UTF-8; a piece that holds part of a multi-byte
    character shows U+FFFD for the missing part (unless it has no shifted byte: then it is Latin-1 text). A piece with characters outside the byte alphabet is not
    byte-level (a word-level or SentencePiece vocabulary) and only has its '▁' made a space.
    """
    if piece is None:
        return None
    if piece and all(ch in BYTE_DECODER for ch in piece):
        raw = bytes(BYTE_DECODER[ch] for ch in piece)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            # Not UTF-8 and no shifted byte in it: plain Latin-1 text of another vocabulary ('café').
            if all(ord(ch) < 0x100 for ch in piece):
                return piece
            return raw.decode("utf-8", errors="replace")
    return piece.replace(SENTENCEPIECE_SPACE, " ")
