"""The JSON header of a .safetensors file, read without its tensors: what `hires info` and a
dry run's LoRA check need of a file (its metadata, its tensors' names), in microseconds; and
whether the file holds all the bytes the header promises (a stat)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def _read(path: str | Path) -> tuple[dict[str, Any], int, int] | None:
    """The header, the file's size and the size its header says it has (8 bytes, the header,
    then up to the largest `data_offsets` end); None if no readable safetensors file."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            size = int.from_bytes(head, "little") if len(head) == 8 else 0
            # A JSON object of at most 100 MB (the format's own limit).
            if not 2 <= size <= 100_000_000 or f.read(1) != b"{":
                return None
            header = json.loads(b"{" + f.read(size - 1))
            have = os.fstat(f.fileno()).st_size
    except (OSError, ValueError):
        return None
    if not isinstance(header, dict):
        return None
    ends = [entry["data_offsets"][1] for name, entry in header.items()
            if name != "__metadata__" and isinstance(entry, dict)
            and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2
            and isinstance(entry["data_offsets"][1], int)]
    return header, have, 8 + size + max(ends, default=0)


def read_header(path: str | Path, whole: bool = True) -> dict[str, Any] | None:
    """The header (tensor name -> dtype, shape, offsets; `__metadata__`), or None if `path` is
    no readable safetensors file, or (`whole`) one cut short of the tensors its header lists
    (`truncated` says so)."""
    read = _read(path)
    if read is None:
        return None
    header, have, need = read
    return None if whole and have < need else header


def truncated(path: str | Path) -> str | None:
    """'truncated (N of M bytes); re-download it' for a safetensors file shorter than its
    header says (an interrupted download or copy); None otherwise."""
    read = _read(path)
    if read is None or read[1] >= read[2]:
        return None
    return f"truncated ({read[1]} of {read[2]} bytes); re-download it"
