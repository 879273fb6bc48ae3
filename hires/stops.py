"""A stop (Ctrl-C, SIGTERM, SIGHUP) that a library swallowed is raised again at the run's next
safe point.

Python raises a signal's exception wherever the main thread is. One raised inside a `__del__`
(the `regex` module's, while transformers builds the CLIP tokenizer) is printed as "Exception
ignored in ..." and dropped: the run went on, saved its image and exited 0 (found by QA).
Python hands such an exception to `sys.unraisablehook`; hires' hook keeps it, unprinted, and
`check()` raises it between steps, before the save, and after the model loads.
"""

from __future__ import annotations

import sys
from typing import Any

_swallowed: list[BaseException] = []
_before = [sys.unraisablehook]  # the hook that says all else


def on_unraisable(unraisable: Any) -> None:
    """`sys.unraisablehook`: a stop is kept for `check`; anything else as Python says it."""
    kind = unraisable.exc_type
    if kind is not None and issubclass(kind, KeyboardInterrupt):
        _swallowed.append(unraisable.exc_value or kind())
        return
    _before[0](unraisable)


def install() -> None:
    """Keep swallowed stops from now on (the CLI's process: a library caller's own is theirs)."""
    if sys.unraisablehook is not on_unraisable:
        _before[0] = sys.unraisablehook
        sys.unraisablehook = on_unraisable


def forget() -> None:
    """A new command: no stop of an earlier one (the tests run many in one process)."""
    _swallowed.clear()


def check() -> None:
    """Raise the stop a library swallowed, if one was: once, so that the cleanup on the way out
    runs undisturbed."""
    if _swallowed:
        stop = _swallowed.pop()
        _swallowed.clear()
        raise stop.with_traceback(None)
