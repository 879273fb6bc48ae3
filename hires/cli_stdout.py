"""`-o -`: the image's bytes on stdout, for pipes (`hires gen "x" -o - | upload`).

The image is made into a temporary folder and copied out only once it is whole, so a failed
run writes nothing to the pipe. While it is made, stdout points at stderr: a stray print of a
library would otherwise land in the middle of the image.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

import typer

from hires import leftovers

STDOUT = "-"


def check(jobs: int, save_stages: bool, as_json: bool, preview: bool,
          terminal: bool = True, upscale: bool = False) -> None:
    """What `-o -` cannot do, as usage errors before any work; `terminal`: a stdout that is
    a terminal too (a dry run prints its plan there); `upscale`: `hires up`'s run (its
    inputs, not prompts, make the images)."""
    if jobs > 1:
        one = "one input image" if upscale else "one prompt and --n 1"
        raise typer.BadParameter(f"-o - writes one image to stdout, and this run makes {jobs}; "
                                 f"give {one}, or -o a folder")
    if as_json:
        raise typer.BadParameter("--json prints to stdout, which -o - fills with the image; "
                                 "drop one")
    if save_stages or preview:
        flag = "--save-stages" if save_stages else "--preview"
        raise typer.BadParameter(f"{flag} names its files after the output; with -o - there "
                                 "is none: -o a file")
    if sys.stdout is None:  # `>&-`: Python's sys.stdout is None (a dry run's check too)
        raise typer.BadParameter("stdout is closed: -o - writes the image there, for a "
                                 "reader; give -o a file name")
    if terminal and sys.stdout.isatty():
        raise typer.BadParameter("-o - writes the image's bytes to stdout, which is a "
                                 "terminal; pipe it (|) or redirect it (>)")


# The image's name in the scratch folder: hires.png, hires.webp, ...
NAME = "hires"


@contextmanager
def named_as_stdout() -> Iterator[None]:
    """Errors of the scratch image's name (a format's limit, --quality for PNG) name `-o -`
    instead: the user gave no file, and 'hires.webp: ...' would say one."""
    import re

    from hires.errors import reworded
    from hires.job import JobError
    from hires.output import OutputError

    try:
        yield
    except (JobError, OutputError) as e:
        raise reworded(e, re.sub(rf"^(?:.*[/\\])?{NAME}\.[a-z]+: ", "-o -: ", str(e))) from None


@contextmanager
def scratch() -> Iterator[Path]:
    """A temporary folder to make the image in; removed after, with what is left in it.

    Its name holds the process id: a run that was killed (SIGKILL, a power cut) cannot remove
    its own, so each run first removes those of this user's runs that are gone."""
    leftovers.remove_stale(Path(tempfile.gettempdir()), "stdout")
    place = Path(tempfile.mkdtemp(prefix=leftovers.prefix("stdout")))
    try:
        yield place
    finally:
        shutil.rmtree(place, ignore_errors=True)


@contextmanager
def on_stderr() -> Iterator[None]:
    """stdout pointed at stderr in the block: Python's prints and, where stdout is a file
    descriptor, C code's writes to it too."""
    sys.stdout.flush()
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a test's capture)
        fd = None
    saved = os.dup(fd) if fd is not None else None
    try:
        if fd is not None:
            # sys.stderr is None where the shell closed it (fd 2 is then held on /dev/null)
            os.dup2(sys.stderr.fileno() if sys.stderr is not None else 2, fd)
        with redirect_stdout(sys.stderr):
            yield
    finally:
        if saved is not None:
            sys.stdout.flush()
            os.dup2(saved, fd)
            os.close(saved)


def send(path: Path) -> tuple[int, int]:
    """Copy the finished image to stdout: (bytes the reader was given, the image's size). A
    reader that went away early (`| head -c 100`) is not an error; it is said (-o - keeps no
    file)."""
    from hires.cli_output import quiet_stdout, stdout_failed

    sent = 0
    try:
        write = _writer()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                view = memoryview(chunk)
                while view:
                    # A pipe whose reader closes mid-write takes part of it and says so only
                    # by the count; the next write raises BrokenPipeError.
                    n = write(view)
                    if not n:
                        raise BrokenPipeError
                    sent += n
                    view = view[n:]
    except BrokenPipeError:
        quiet_stdout()
    except OSError as e:  # not a reader gone: a disk full, an I/O error (-o - keeps no file)
        raise stdout_failed(e) from None
    return sent, path.stat().st_size


def _writer():
    """What writes to stdout and returns how many bytes went: its file descriptor's write,
    as Python's buffered writer can hold bytes back, or count a short write as whole."""
    out = sys.stdout.buffer
    out.flush()
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a test's capture)
        return out.write
    return lambda data: os.write(fd, data)
