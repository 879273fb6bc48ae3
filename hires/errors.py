"""What hires quotes of another library's exception in its own one-line errors, and the error
of numbers gone bad (`NotFinite`)."""

from __future__ import annotations

import copy
import re
from typing import Any


class NotFinite(ArithmeticError):
    """A model's output held NaN or inf (an fp16 overflow, mostly): saved, it would be a black
    image; the message says which model and what to change."""


def dtype_name(dtype: Any) -> str:
    """'fp16', 'bf16', 'fp32' as the flags say them (else torch's name)."""
    return {"torch.float16": "fp16", "torch.bfloat16": "bf16", "torch.float32": "fp32"}.get(
        str(dtype), str(dtype))


def reworded(error: Exception, message: str) -> Exception:
    """`error` with another message, of its own kind and with its attributes (a ModelError's
    `usage`, a Busy's `pid`), for a caller to raise in its place."""
    said = copy.copy(error)
    said.args = (message,)
    return said


def path_said(message: str, path: object, said: str) -> str:
    """`message` with `path` named as the user gave it (`said`): where it stands whole, not
    inside a word ('g/' for 'g' would make 'imag/e')."""
    text = str(path)
    if not text or text == said:
        return message
    return re.sub(rf"(?<![\w./-]){re.escape(text)}(?![\w/-]|\.\w)", lambda _: said, message)


def first_line(e: BaseException) -> str:
    """The exception's first line of text (at most 300 characters), else its type's name."""
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else type(e).__name__


_SHAPES = r"torch\.Size\(\[([\d, ]*)\]\)"


def shape_mismatch(text: str) -> tuple[str, list[int], list[int]] | None:
    """(tensor name, its shape in the weights, the shape the model makes) of the first
    mismatch in a loading error: diffusers' meta-device loading says "X expected shape A, but
    got B", torch's load_state_dict "size mismatch for X: ... shape B ... shape A"."""
    if found := re.search(rf"(\S+) expected shape {_SHAPES}, but got {_SHAPES}", text):
        name, want, got = found.groups()
    elif found := re.search(rf"size mismatch for (\S+?):.*?shape {_SHAPES}.*?shape {_SHAPES}",
                            text, re.S):
        name, got, want = found.groups()
    else:
        return None

    def dims(text: str) -> list[int]:
        return [int(d) for d in text.split(",") if d.strip()]

    return name, dims(got), dims(want)


def shape_text(dims: list[int]) -> str:
    """A tensor's shape as messages write it: 64x99."""
    return "x".join(map(str, dims))
