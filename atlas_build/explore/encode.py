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
