"""Text from bytes a user gave (a job file, a preset, prompts or jobs on stdin): UTF-8, or
UTF-16 where its byte-order mark says so (Windows' "Unicode" text files, PowerShell's pipes);
an error names the line and says how to fix it."""

from __future__ import annotations

UTF16_MARKS = (b"\xff\xfe", b"\xfe\xff")  # UTF-16's byte-order marks, little and big end
LATIN1_FIX = "iconv -f latin1 -t utf-8 converts Latin-1"


def is_utf16(data: bytes) -> bool:
    """Whether `data` starts with a UTF-16 byte-order mark."""
    return data.startswith(UTF16_MARKS)


def decoded(data: bytes, what: str, fix: str) -> str:
    """`data` as text (a UTF-8 byte-order mark dropped); ValueError naming `what` ("j.toml",
    "the jobs on stdin") and the bad line, and saying `fix` ("save it as UTF-8")."""
    utf16 = is_utf16(data)
    try:
        return data.decode("utf-16" if utf16 else "utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise ValueError(problem(e, what, fix, utf16)) from None


def problem(error: UnicodeDecodeError, what: str, fix: str, utf16: bool = False) -> str:
    """What `error` says of `what`'s bytes, in a line: where, and how to fix it."""
    before = error.object[:error.start]
    # Lines counted in the text before: in UTF-16 a byte 0x0A is no line break
    line = (before.decode("utf-16", "replace") if utf16 else before.decode("utf-8", "replace")
            ).count("\n") + 1
    where = f"(line {line}, byte {error.start})"
    if utf16:  # its mark says UTF-16, and Latin-1 advice would garble it
        return (f"{what}: UTF-16 text (its byte-order mark says so), broken or cut short "
                f"{where}; give it whole, as UTF-16 or UTF-8")
    return f"{what}: not UTF-8 text {where}; {fix} ({LATIN1_FIX})"
