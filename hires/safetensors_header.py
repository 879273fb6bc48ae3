"""The JSON header of a .safetensors file, read without its tensors: what `hires info` and a
dry run's LoRA check need of a file (its metadata, its tensors' names), in microseconds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_header(path: str | Path) -> dict[str, Any] | None:
    """The header (tensor name -> dtype, shape, offsets; `__metadata__`), or None if `path` is
    no readable safetensors file."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            size = int.from_bytes(head, "little") if len(head) == 8 else 0
            # A JSON object of at most 100 MB (the format's own limit).
            if not 2 <= size <= 100_000_000 or f.read(1) != b"{":
                return None
            header = json.loads(b"{" + f.read(size - 1))
    except (OSError, ValueError):
        return None
    return header if isinstance(header, dict) else None
