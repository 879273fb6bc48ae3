"""What hires quotes of another library's exception in its own one-line errors."""

from __future__ import annotations


def first_line(e: BaseException) -> str:
    """The exception's first line of text (at most 300 characters), else its type's name."""
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else type(e).__name__
