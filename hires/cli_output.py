"""What the command line prints and how it exits.

stdout carries only results (one path, or one JSON object, per image; with `-o -` the image
itself); everything else goes to stderr. Exit codes: 0 success, 1 runtime failure, 2 usage
error, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM), 129 hung up (SIGHUP). A reader
that closes stdout early (`| head -1`) is normal: hires stops printing and exits quietly.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from typer.core import TyperGroup


class _LogConsole(Console):
    """rich's console for the log on stderr, but a reader of it that goes away (`2>&1 | head`),
    or a stderr that takes no more (`2>/dev/full`, a closed terminal's EIO), ends only the log,
    not the run: rich's own answer is exit 1, the image lost."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        _to_devnull(sys.stderr)

    def _check_buffer(self) -> None:
        # rich turns only BrokenPipeError into on_broken_pipe(); any other write error of the
        # log is the same to the run (rich calls this for every write, its bars' too)
        try:
            super()._check_buffer()
        except OSError:
            self.on_broken_pipe()


err = _LogConsole(stderr=True, highlight=False, soft_wrap=True)

EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 1, 2, 130, 143
EXIT_HUNG_UP = 129  # 128 + SIGHUP, as the shell reports a process the signal killed


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every cleanup (temp files) runs on the way out."""

    word, code = "terminated", EXIT_TERMINATED


class HungUp(Terminated):
    """SIGHUP (the terminal closed, an SSH session dropped): cleaned up as SIGTERM is."""

    word, code = "hung up", EXIT_HUNG_UP


def on_sigterm(signum, frame) -> None:
    """The handler of SIGTERM and SIGHUP."""
    raise HungUp() if signum == getattr(signal, "SIGHUP", None) else Terminated()


class StdoutError(Exception):
    """stdout took no more (`>/dev/full`, an I/O error): the results are lost, which one
    `error:` line says (a reader that went away, `| head -1`, is no error). `saved`: the image
    that is made all the same."""

    def __init__(self, error: OSError, saved: str | list[str] | None = None):
        self.error = error
        saved = [saved] if isinstance(saved, str) else saved or []
        where = (f"; the image is saved at {saved[0]}" if len(saved) == 1 else
                 f"; {len(saved)} images are saved, the first at {saved[0]}, the last at "
                 f"{saved[-1]}" if saved else "")
        super().__init__(f"cannot write to stdout: {error.strerror or error}{where}")


def json_line(record: dict[str, Any], names: tuple[str, ...] = ("path", "file")) -> str:
    """A result's JSON line; its file names (the `names` keys, and those an "error" names) as
    their bytes read as UTF-8, as the files are named on disk, in any locale
    (`output.name_text`)."""
    from hires.output import name_text

    named = {k: name_text(v) for k, v in record.items()
             if (k in names or k == "error" and isinstance(v, str)) and v}
    return json.dumps({**record, **named}, default=str)


def out_line(text: str) -> None:
    """One line of results on stdout; a reader that went away (`| head -1`) is not an error,
    a stdout that takes no more is a StdoutError."""
    try:
        _print_line(text)
    except BrokenPipeError:
        quiet_stdout()
    except OSError as e:
        raise stdout_failed(e) from None


def _print_line(text: str) -> None:
    try:
        print(text, flush=True)
    except UnicodeEncodeError:
        _print_bytes(text, sys.stdout)


def _print_bytes(text: str, stream: Any) -> None:
    """A line its stream's encoding cannot say (a C locale's ASCII, PYTHONIOENCODING=ascii):
    a path is written as the bytes the filesystem holds (as `ls` does), not turned into a
    failure after the work. Those are os.fsencode's (in EUC-JP, the name's kanji in EUC-JP
    where the rest is UTF-8's surrogates); text that has no such bytes, as UTF-8."""
    try:
        raw = os.fsencode(text)
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogateescape")
    stream.flush()
    stream.buffer.write(raw + b"\n")
    stream.flush()


def _encodes(text: str, stream: Any) -> bool:
    """Whether `stream` can write `text` in its own encoding (a stream without one can)."""
    try:
        text.encode(getattr(stream, "encoding", None) or "utf-8")
    except UnicodeEncodeError:
        return False
    except LookupError:  # an encoding Python does not know: as print would fail, later
        return True
    return True


def stdout_failed(error: OSError) -> StdoutError:
    """The error for a write to stdout that failed; stdout is pointed at /dev/null, so that
    neither later lines nor the flush at exit fail again (a traceback, exit 120)."""
    quiet_stdout()
    return StdoutError(error)


def quiet_stdout() -> None:
    """Point stdout at /dev/null, so that neither later prints nor the flush at exit complain
    of a reader that went away."""
    _to_devnull(sys.stdout)


def _to_devnull(stream) -> None:
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a test's capture): no fd
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


class Quiet:
    """Whether to keep stderr free of anything but errors."""

    on = False
    bars_off = False  # whether library_bars() turned the libraries' progress bars off
    progress = "auto"  # --progress: auto, bars, plain or json
    warned: set[str] = set()  # what warn_once said in this command
    # A stdout that took no more (StdoutError) and the images made since: the run goes on,
    # and the command ends with the one error line (exit_codes).
    lost: OSError | None = None
    saved: list[str] = []


def warn_once(message: str) -> None:
    """A warning said once in a command, however many of its images it is about (a long
    prompt's, once for `--n 20`)."""
    if message not in Quiet.warned:
        Quiet.warned.add(message)
        warn(message)


# What str.splitlines() breaks a line at, each shown as its escape: a value quoted raw in a
# message (a sampler "eu\nler" from a job file) cannot split its line in two.
_BREAKS = {c: repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


def one_line(text: str) -> str:
    """`text` with its line breaks escaped (\\n, \\u2028): one line for a log's readers."""
    return "".join(_BREAKS.get(c, c) for c in text)


def _stderr(kind: str, text: str) -> None:
    """One line on stderr: text (`warning: ...`, `error: ...`), or with --progress json an
    object (`{"log": ...}`, `{"warning": ...}`, `{"error": ...}`), so that a program reading
    the progress parses every line hires writes there."""
    if Quiet.progress != "json":
        line = one_line(text if kind == "log" else f"{kind}: {text}")
        if _encodes(line, sys.stderr) or not hasattr(sys.stderr, "buffer"):
            err.print(line, markup=False)
            return
        try:  # as _print_line: a file's name as its bytes, not '\udcc3\udca9' escapes
            _print_bytes(line, sys.stderr)
        except OSError:  # as _LogConsole does: the log's reader went away, not the run
            _to_devnull(sys.stderr)
        return
    from hires.output import name_text

    try:  # the files a message names, as --json names them (in any locale)
        print(json.dumps({kind: name_text(text)}), file=sys.stderr, flush=True)
    except OSError:  # as _LogConsole does: the log's reader went away (or its disk filled),
        _to_devnull(sys.stderr)  # not the run


def say(message: str) -> None:
    """A log line on stderr (not with -q)."""
    if not Quiet.on:
        _stderr("log", message)


def tell(message: str) -> None:
    """A log line on stderr that -q keeps: it is about the result (a batch's count)."""
    _stderr("log", message)


def warn(message: str) -> None:
    """A warning on stderr (shown with -q too: it is about the result)."""
    _stderr("warning", message)


def fail(message: str, code: int) -> typer.Exit:
    _stderr("error", message)
    return typer.Exit(code)


def error_line(message: str) -> None:
    """An error on stderr whose exit code the command sets at its end (a batch's job)."""
    _stderr("error", message)


def stopped(stop: KeyboardInterrupt) -> int:
    """The line for Ctrl-C, SIGTERM or SIGHUP (an error object with --progress json); returns
    the exit code."""
    word, code = (stop.word, stop.code) if isinstance(stop, Terminated) else \
        ("interrupted", EXIT_INTERRUPTED)
    _stderr("error" if Quiet.progress == "json" else "log", word)  # text: the bare word
    return code


def _json_warning(message, category, filename, lineno, file=None, line=None) -> None:
    _stderr("warning", f"{category.__name__}: {message}")


def emit(record: dict[str, Any], as_json: bool) -> None:
    """A result on stdout: its path, or its JSON object. If stdout takes no more, the run's
    other images are made all the same, and the command ends with one error that says where
    they are (`exit_codes`, from `Quiet.lost` and `Quiet.saved`; a failed batch job's line
    names none)."""
    made = record.get("status", "done") in ("done", "skipped")
    if Quiet.lost is None:
        try:
            out_line(json_line(record) if as_json else record["path"])
            return
        except StdoutError as e:
            Quiet.lost = e.error
    if made:
        Quiet.saved.append(record["path"])



MANY_ERRORS = 20  # a batch's errors shown at once; a file of 1,000 bad jobs says 20 of them


@contextmanager
def exit_codes() -> Iterator[None]:
    """Turn our exceptions into one-line errors and the documented exit codes."""
    import warnings

    from hires.errors import NotFinite
    from hires.job import JobError
    from hires.output import OutputError

    lost, saved = None, []
    try:
        with warnings.catch_warnings():
            if Quiet.progress == "json":  # the libraries' warnings as objects too
                warnings.showwarning = _json_warning
            try:
                yield
            finally:  # a later error says its own line; results lost are said at the end
                lost, saved, Quiet.lost, Quiet.saved = Quiet.lost, Quiet.saved, None, []
        if lost is not None:  # stdout took no more (emit): the images were made all the same
            raise StdoutError(lost, saved=saved)
    except typer.Exit as e:
        if lost is not None:  # a batch with failed jobs ends so: its lost results said too
            raise fail(str(StdoutError(lost, saved=saved)), e.exit_code or EXIT_RUNTIME) from None
        raise
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM or SIGHUP
        raise typer.Exit(stopped(e)) from None
    except (JobError, typer.BadParameter) as e:
        said = getattr(e, "errors", None) or [str(e)]  # a batch's jobs: each its own line
        if len(said) > MANY_ERRORS:  # a log line, first: the last line is an error's
            _stderr("log", f"{len(said)} errors in the jobs; the first {MANY_ERRORS} follow (fix "
                    "them, and the next run says the rest)")
            said = said[:MANY_ERRORS]
        for line in said[:-1]:
            _stderr("error", line)
        raise fail(said[-1], EXIT_USAGE) from None
    except OutputError as e:
        raise fail(str(e), EXIT_USAGE if e.usage else EXIT_RUNTIME) from None
    except (NotFinite, StdoutError) as e:  # its message says what to change, or what is lost
        raise fail(str(e), EXIT_RUNTIME) from None
    except Exception as e:
        from hires.images import ImageInputError

        if isinstance(e, ImageInputError):  # the user's input file: theirs to fix
            raise fail(str(e), EXIT_USAGE) from None
        from hires.model_refs import ModelError

        debug = debug_on()
        if debug:  # added before the error's line; the line and the exit code stay as they are
            debug_traceback(e)
        first = error_text(e)
        if not isinstance(e, ModelError):
            hint = "" if debug else " (set HIRES_DEBUG=1 for the traceback)"
            raise fail(f"{first}{hint}", EXIT_RUNTIME) from None
        raise fail(first, EXIT_USAGE if e.usage else EXIT_RUNTIME) from None


def error_text(error: BaseException) -> str:
    """An error's line as hires says it: our own errors' text, another's with its type's name
    ("RuntimeError: CUDA error: ..."), its first line only."""
    from hires.errors import NotFinite
    from hires.images import ImageInputError
    from hires.job import JobError
    from hires.model_refs import ModelError
    from hires.output import OutputError

    ours = isinstance(error, (JobError, OutputError, ModelError, ImageInputError, NotFinite,
                              StdoutError))
    text = (str(error) if ours else f"{type(error).__name__}: {error}").strip()
    return text.splitlines()[0] if text else type(error).__name__


def debug_on() -> bool:
    """Whether HIRES_DEBUG asks for tracebacks: 1 (or yes, true, on); not 0, no, false, off
    or empty, as a script that templates it off writes it."""
    return os.environ.get("HIRES_DEBUG", "").strip().lower() not in ("", "0", "no", "false",
                                                                      "off")


def debug_traceback(error: BaseException) -> None:
    """What HIRES_DEBUG=1 adds before an error's line (a command's, or a failed batch job's):
    its traceback on stderr, as it is (with --progress json as one log object, so every line
    there still parses). It ended the command by raising the error, which made a usage error
    exit 1 without its `error:` line."""
    import traceback

    text = "".join(traceback.format_exception(error)).rstrip()
    if Quiet.progress == "json":
        _stderr("log", text)
        return
    try:
        print(text, file=sys.stderr, flush=True)
    except OSError:  # the log's reader went away: the error's exit code still counts
        _to_devnull(sys.stderr)


class OneLineErrors(TyperGroup):
    """click's own usage errors (an unknown option, a bad number) as one line, like hires'
    errors: `error: no such option: --sise (...) (see 'hires gen -h')`, exit 2. click prints
    four lines, its usage and a hint around the message."""

    def invoke(self, ctx: Any) -> Any:
        Quiet.warned = set()  # per command: tests and scripts call the app many times
        # A stop that lands outside a command's own handling (after its work, as it returns):
        # typer would end it as a silent exit 130, SIGTERM too.
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as e:
            raise typer.Exit(stopped(e)) from None

    def _named(self, args: tuple, kwargs: dict[str, Any]) -> str:
        """The command a usage error without click's context was in (`hires plan --gpu`, its
        value missing), from the arguments."""
        words = self._words(args, kwargs)
        command = next((w for w in words if not w.startswith("-")), None)
        return f"hires {command}" if command in self.commands else "hires"

    @staticmethod
    def _words(args: tuple, kwargs: dict[str, Any]) -> list[str]:
        """The command line's words (after `hires`), as `main` was given them."""
        given = args[0] if args and args[0] is not None else kwargs.get("args")
        return [str(w) for w in (sys.argv[1:] if given is None else given)]

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        # typer's click classes, found through a public one: typer >= 0.2x carries its own
        # copy of click, older ones use click itself.
        found = {c.__name__: c for c in typer.BadParameter.__mro__}
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except SystemExit as e:
            # typer ends a closed stdout (`hires --help | head -1`) as exit 1, even here; its
            # sign is the flush wrapper it puts on stdout first. A reader gone is no error.
            if e.code == 1 and type(sys.stdout).__name__ == "PacifyFlushWrapper":
                quiet_stdout()
                sys.exit(0)
            raise
        except found["ClickException"] as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # `hires` alone: the help
                e.show()
                sys.exit(e.exit_code)
            text = e.format_message().rstrip(".")
            text = text[:1].lower() + text[1:]
            ctx = getattr(e, "ctx", None)
            if ctx is not None and ctx.info_name == "presets" and text.startswith(
                    "no such command '"):  # `hires presets 16k`: a preset's name
                text += f"; '{ctx.command_path} show {text.split(chr(39))[1]}' shows a preset"
            if type(e).__name__ == "NoSuchOption" and ctx is not None:
                text = no_such_option(e.option_name, ctx)
            if isinstance(e, found["UsageError"]):
                text += f" (see '{ctx.command_path if ctx else self._named(args, kwargs)} -h')"
            if progress_asked(self._words(args, kwargs)) == "json":
                # found as the options are read (--steps abc): an object, as every stderr
                # line of a run with --progress json is
                Quiet.progress = "json"
                _stderr("error", text)
            else:
                err.print(f"error: {text}", markup=False)
            sys.exit(e.exit_code)
        except StdoutError as e:  # outside a command (--version)
            err.print(f"error: {e}", markup=False)
            sys.exit(EXIT_RUNTIME)
        except OSError as e:
            # Commands' own errors are lines already (exit_codes): what gets here is click's
            # writing, its help (-h) on a stdout that takes no more.
            err.print(f"error: {stdout_failed(e)}", markup=False)
            sys.exit(EXIT_RUNTIME)
        except typer.Abort as e:  # Ctrl-D, or a stop outside a command's own handling
            # click's Abort hides which signal it was (SIGHUP, SIGTERM): its cause says
            cause = e.__cause__
            sys.exit(stopped(cause if isinstance(cause, KeyboardInterrupt) else
                             KeyboardInterrupt()))
        sys.exit(code if isinstance(code, int) else 0)


PROGRESS_COMMANDS = ("gen", "up", "batch")  # the commands with --progress


def progress_asked(words: list[str]) -> str | None:
    """The --progress a command line gives to a command that has it (its last, as click takes
    it), read before click has read it: a usage error it finds is said in that form."""
    # an option before the command is the top level's ('hires -q gen'): its error is not the
    # command's
    if not words or words[0] not in PROGRESS_COMMANDS:
        return None
    asked, words = None, words[1:]
    for i, word in enumerate(words):
        if word == "--":  # what follows is arguments, a prompt '--progress' too
            break
        if word == "--progress" and i + 1 < len(words):
            asked = words[i + 1]
        elif word.startswith("--progress="):
            asked = word.split("=", 1)[1]
    return asked


def no_such_option(name: str, ctx: Any) -> str:
    """click's 'no such option', with only the close names as suggestions: click compares them
    dashes and all, and every long option shares its '--' (--bogus suggested --gpu)."""
    import difflib

    # --no-x only for a --no-... typed, and only such: --dry-run for --no-dry-run is its opposite
    negated = name.lstrip("-").startswith("no-")
    options = {o.lstrip("-"): o for p in ctx.command.params
               for o in (p.secondary_opts if negated else p.opts) if o.startswith("--")}
    close = difflib.get_close_matches(name.lstrip("-"), list(options), n=3, cutoff=0.6)
    return f"no such option: {name}" + (
        f" (did you mean {' or '.join(options[c] for c in close)}?)" if close else "")


def library_bars(quiet: bool) -> None:
    """diffusers, transformers and the Hub draw their own tqdm bars (loading a local folder
    shows two): off with -q, and where hires' own progress is not bars (stderr no terminal, a
    dumb one, --progress plain: their carriage returns and escapes would litter a log), on
    otherwise (the setting is per process; tests run many)."""
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as transformers_logging

    bars = Quiet.progress == "bars" or (Quiet.progress == "auto" and sys.stderr.isatty()
                                        and not dumb_terminal())
    off = quiet or not bars
    if off == Quiet.bars_off:
        return  # only undo what we did: a user's HF_HUB_DISABLE_PROGRESS_BARS stays in force
    for module in (diffusers_logging, transformers_logging):
        (module.disable_progress_bar if off else module.enable_progress_bar)()
    (disable_progress_bars if off else enable_progress_bars)()
    Quiet.bars_off = off


def dumb_terminal() -> bool:
    return os.environ.get("TERM", "").lower() in ("dumb", "unknown")


def progress_renderer(quiet: bool, plan=None, image: str | None = None):
    """As --progress says (auto: rich bars on a terminal, plain lines otherwise), nothing with
    -q; with `plan`, they say how long the rest of the job takes too."""
    from contextlib import nullcontext

    from hires.progress import JsonProgress, PlainProgress, RichProgress

    mode = Quiet.progress
    if quiet:
        return nullcontext(None)
    if mode == "json":  # the image named as --json names it (`output.name_text`)
        from hires.output import name_text

        named = name_text(image) if image else image
        return nullcontext(JsonProgress(sys.stderr, plan=plan, image=named))
    # A dumb terminal (TERM=dumb: an editor's shell, some CI logs) cannot redraw a bar: rich
    # would show them all only at the end, so it gets plain lines as it goes.
    if mode == "bars" or (mode == "auto" and sys.stderr.isatty() and not dumb_terminal()):
        return RichProgress(err, plan=plan)
    return nullcontext(PlainProgress(sys.stderr, plan=plan))
