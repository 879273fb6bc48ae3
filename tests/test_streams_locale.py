"""A UTF-8 prompt in a C locale (`LC_ALL=C PYTHONUTF8=0`: Python decodes argv and stdin as
ASCII, the other bytes as surrogates) is the prompt typed, not "not valid UTF-8 text"; only
a prompt that truly is not UTF-8 is refused."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from helpers_cli import REPO, hires_cmd, subprocess_env

PROMPT = "café 猫"
C_LOCALE = {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": ""}


def _in_c_locale(tmp_path, prompt: str | bytes, stdin: bytes = b"") -> subprocess.CompletedProcess:
    """`hires gen PROMPT --dry-run --json` in a C locale; stdout as text (JSON is ASCII)."""
    args = [*hires_cmd("gen"), prompt, "--model", "tiny", "--size", "256", "--dry-run",
            "--json", "-o", str(tmp_path / "x.png")]
    return subprocess.run(args, input=stdin, capture_output=True, env=subprocess_env(**C_LOCALE),
                          cwd=REPO, timeout=300)


@pytest.mark.parametrize("where", ["argument", "stdin"])
def test_a_utf8_prompt_in_a_c_locale_is_the_prompt_typed(tmp_path, where):
    done = (_in_c_locale(tmp_path, PROMPT) if where == "argument" else
            _in_c_locale(tmp_path, "-", stdin=f"{PROMPT}\n".encode()))
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert json.loads(done.stdout.splitlines()[0])["images"][0]["prompt"] == PROMPT


def test_a_prompt_that_is_not_utf8_is_still_refused(tmp_path):
    done = _in_c_locale(tmp_path, "caf\xe9".encode("latin-1"))
    assert done.returncode == 2
    assert done.stderr.decode().strip() == \
        "error: the prompt is not valid UTF-8 text; check its encoding"


def test_a_negative_prompts_argv_bytes_are_read_as_utf8():
    """argv's UTF-8 bytes as a C locale leaves them: surrogates for each non-ASCII byte."""
    from hires.cli_jobs import argv_text, job_flags

    typed = "na\udcc3\udcafve"  # "naïve"
    assert job_flags({"negative": typed})["negative"] == "naïve"
    assert argv_text("caf\udce9") == "caf\udce9"  # Latin-1: not UTF-8, the job refuses it


def test_a_prompt_template_in_a_c_locale_names_the_file_in_utf8(tmp_path):
    """`-o '{prompt}.png'` failed with "UnicodeEncodeError ..." (exit 1): the ASCII file
    system encoding cannot hold 'café'; the name's bytes are its UTF-8 now, and --json, the
    batch manifest and the image's record name it so, not in lone surrogates."""
    from hires import output

    jobs = tmp_path / "jobs.jsonl"
    tiny = {"model": "tiny", "size": 64, "steps": 1}
    jobs.write_text(json.dumps({"prompt": "猫", "output": "{prompt}.png", **tiny}) + "\n",
                    encoding="utf-8")
    runs = {"gen": [*hires_cmd("gen"), PROMPT, "-o", str(tmp_path / "{prompt}.png"),
                    "--progress", "json", *(f"--{k}={v}" for k, v in tiny.items())],
            "batch": [*hires_cmd("batch"), str(jobs), "-o", str(tmp_path / "b"),
                      "--manifest", str(tmp_path / "m.jsonl")]}
    lines, events = {}, {}
    for name, args in runs.items():
        done = subprocess.run([*args, "--json"], capture_output=True, cwd=REPO,
                              env=subprocess_env(**C_LOCALE), timeout=300)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        lines[name] = json.loads(done.stdout.splitlines()[-1])
        events[name] = [json.loads(line) for line in done.stderr.splitlines()
                        if line.startswith(b'{"image"')]
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        ["b", "café-猫.png", "jobs.jsonl", "m.jsonl"]
    made = tmp_path / "café-猫.png"
    assert lines["gen"]["path"] == str(made)
    assert events["gen"] and {e["image"] for e in events["gen"]} == {str(made)}
    assert output.read_metadata(made)["hires"]["result"]["path"] == str(made)
    assert "猫" in lines["batch"]["path"]
    manifest = json.loads((tmp_path / "m.jsonl").read_text(encoding="utf-8"))
    assert manifest["path"] == lines["batch"]["path"]
    assert Path(manifest["path"]).is_file()


def test_a_utf8_prompt_in_a_latin1_locale_is_the_prompt_typed(monkeypatch):
    """A Latin-1 locale decodes a UTF-8 terminal's 'café' to 'cafÃ©', valid text that the
    job took as typed; Latin-1 text itself stays as the locale read it."""
    import sys

    from hires.cli_jobs import argv_text

    monkeypatch.setattr(sys, "getfilesystemencoding", lambda: "iso8859-1")
    assert argv_text(PROMPT.encode().decode("latin-1")) == PROMPT
    assert argv_text("café") == "café"  # the bytes 63 61 66 e9: not UTF-8, Latin-1 text
    assert argv_text("plain") == "plain"


@pytest.mark.parametrize("start", [["hires"], ["/usr/bin/python3", "-m", "hires"]])
def test_a_utf8_prompt_and_path_in_an_euc_jp_locale_are_as_typed(monkeypatch, tmp_path, start):
    """An EUC-JP locale decodes a UTF-8 'café 猫' with the C library to 'caf\u8fbf \udce7\x8c
    \udcab', which Python's euc_jp codec cannot encode back: the prompt was refused, and a
    file named so could not be opened (`-o 猫.png` failed with a UnicodeEncodeError, exit 1).
    argv's values are read again from /proc/self/cmdline's bytes, as os.fsdecode does."""
    import os
    import sys

    from hires import cli_jobs

    seen = "caf\u8fbf \udce7\x8c\udcab"  # what Python made of PROMPT's bytes, measured
    given = ["gen", "{v}", "--negative={v}", "-o", "{v}.png", "ascii"]
    cmdline = tmp_path / "cmdline"
    cmdline.write_bytes(b"".join(a.format(v=PROMPT).encode() + b"\0"
                                 for a in [*start, *given]))
    monkeypatch.setattr(sys, "getfilesystemencoding", lambda: "euc_jp")
    monkeypatch.setattr(os, "fsdecode", lambda raw: raw.decode("euc_jp", "surrogateescape"))
    monkeypatch.setattr(sys, "orig_argv", [a.format(v=seen) for a in [*start, *given]])
    monkeypatch.setattr(sys, "argv", ["/x/hires", *(a.format(v=seen) for a in given)])
    monkeypatch.setattr(cli_jobs, "CMDLINE", cmdline)
    cli_jobs.argv_as_typed()
    assert [a.encode("euc_jp", "surrogateescape") for a in sys.argv[1:]] == \
        [a.format(v=PROMPT).encode() for a in given]  # the bytes typed: the file opens
    assert sys.argv[-1] == "ascii" and sys.argv[0] == "/x/hires"
    assert cli_jobs.argv_text(sys.argv[2]) == PROMPT
    assert cli_jobs.job_flags({"negative": sys.argv[3].split("=", 1)[1]})["negative"] == PROMPT


def test_a_path_stdout_cannot_encode_is_printed_as_the_files_bytes(monkeypatch):
    """In an EUC-JP locale the name of '日本の猫.png' (UTF-8 on disk) reads as EUC-JP kanji
    and surrogates; stdout's codec refuses the surrogates, and the fallback wrote the whole
    text as UTF-8: kanji that were the name's EUC-JP pairs came out as other bytes, and
    `ls "$(hires gen ...)"` found nothing. The line is the file's bytes now."""
    import io
    import os
    import sys

    from hires.cli_output import _print_line

    name = "日本の猫.png".encode()
    seen = name.decode("euc_jp", "surrogateescape")  # what the locale makes of the name
    monkeypatch.setattr(os, "fsencode", lambda text: text.encode("euc_jp", "surrogateescape"))
    out = io.TextIOWrapper(io.BytesIO(), encoding="euc_jp")
    monkeypatch.setattr(sys, "stdout", out)
    _print_line(seen)
    assert out.buffer.getvalue() == name + b"\n"


def test_a_presets_name_in_a_c_locale_is_its_files_name_in_utf8(tmp_path):
    """`presets list --json` gave "name": "m\\udcc3\\udcafne" beside "path": ".../mïne.toml"."""
    folder = tmp_path / "presets"
    folder.mkdir()
    (folder / "mïne.toml").write_text('description = "mine"\nsteps = 3\n', encoding="utf-8")
    done = subprocess.run([*hires_cmd("presets"), "list", "--json"], capture_output=True,
                          cwd=REPO, timeout=300,
                          env=subprocess_env(**C_LOCALE, HIRES_PRESETS=str(folder)))
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    (mine,) = [p for p in map(json.loads, done.stdout.splitlines()) if p["origin"] == "yours"]
    assert (mine["name"], Path(mine["path"]).name) == ("mïne", "mïne.toml")


def test_an_euc_jp_prompt_in_an_euc_jp_locale_stays_as_the_locale_read_it(monkeypatch):
    """'猫' in EUC-JP is C7 AD, which is valid UTF-8 too (for 'ǭ'): the prompt a Japanese
    user typed in a correctly set locale became another letter."""
    import sys

    from hires.cli_jobs import argv_text

    monkeypatch.setattr(sys, "getfilesystemencoding", lambda: "euc_jp")
    for typed in ("猫", "日本の猫, 油絵"):
        assert argv_text(typed) == typed
    # a UTF-8 prompt the locale could not read whole (its '猫' is no EUC-JP) is still UTF-8's
    seen = PROMPT.encode().decode("euc_jp", "surrogateescape")
    assert argv_text(seen) == PROMPT


@pytest.mark.parametrize("encoding", ["iso8859-1", "ascii"])
def test_an_inputs_utf8_name_is_cut_as_its_letters_in_any_locale(monkeypatch, encoding):
    """`up café.png -o '{name}-up.png'`: a Latin-1 locale reads the name's bytes as 'cafÃ©',
    whose '©' became '-' and was cut, leaving half of 'é' (byte C3) in the output's name; a C
    locale lost the 'é' ('caf'). The part's bytes are the input name's UTF-8 now."""
    import os

    from hires.output import stem_part

    monkeypatch.setattr(os, "fsencode", lambda t: t.encode(encoding, "surrogateescape"))
    monkeypatch.setattr(os, "fsdecode", lambda b: b.decode(encoding, "surrogateescape"))
    seen = os.fsdecode("café du matin".encode())
    assert os.fsencode(stem_part(seen)) == "café-du-matin".encode()
    latin1 = os.fsdecode("caf\xe9".encode("latin-1"))  # a name that is not UTF-8: as it is
    assert stem_part(latin1) == ("caf\xe9" if encoding == "iso8859-1" else "caf")


def test_progress_json_log_and_error_lines_name_files_in_utf8(monkeypatch, capsys, tmp_path):
    """--progress json's {"log": ...} and {"error": ...} lines carried a C locale's lone
    surrogates for a UTF-8 file name ("caf\\udcc3\\udca9.png"), which JSON readers refuse or
    garble; the manifest's "error" too. They read as the files' UTF-8 now, and text the locale
    cannot encode (a prompt's '猫') beside it stays as it is."""
    import os

    from hires import cli_output
    from hires.output import append_manifest

    monkeypatch.setattr(os, "fsencode", lambda t: t.encode("ascii", "surrogateescape"))
    name = "caf\udcc3\udca9.png"
    monkeypatch.setattr(cli_output.Quiet, "progress", "json")
    cli_output.say(f"saved {name}")
    cli_output.warn(f"猫: {name} is large")
    cli_output.say("saved caf\udcc3\udca9_\udcff.png")  # UTF-8 beside a byte that is not
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines == [{"log": "saved café.png"}, {"warning": "猫: café.png is large"},
                     {"log": "saved café_\udcff.png"}]
    append_manifest(tmp_path / "m.jsonl", {"path": name, "error": f"cannot write {name}"})
    record = json.loads((tmp_path / "m.jsonl").read_text(encoding="utf-8"))
    assert record == {"path": "café.png", "error": "cannot write café.png"}


def test_a_log_line_naming_a_utf8_file_is_its_bytes_on_a_c_locales_stderr(monkeypatch):
    """The log said 'saved \\udcc3\\udca7a/caf\\udcc3\\udca9.png' (Python's escapes) where stdout
    printed the name's bytes; a UTF-8 terminal in a C locale shows them as the name."""
    import io
    import os
    import sys

    from hires import cli_output

    monkeypatch.setattr(os, "fsencode", lambda t: t.encode("ascii", "surrogateescape"))
    log = io.TextIOWrapper(io.BytesIO(), encoding="ascii", errors="backslashreplace")
    monkeypatch.setattr(sys, "stderr", log)
    monkeypatch.setattr(cli_output.Quiet, "progress", "plain")
    cli_output.say("saved \udcc3\udca7a/caf\udcc3\udca9.png")
    cli_output.warn("plain ASCII")
    log.flush()
    assert log.buffer.getvalue() == "saved ça/café.png\nwarning: plain ASCII\n".encode()


def test_an_euc_jp_name_and_message_stay_as_an_euc_jp_locale_reads_them(monkeypatch):
    """EUC-JP's 'a息猫' (61 C2 A9 C7 AD) is valid UTF-8 too ('a©ǭ'): `{name}` became 'a-猫'
    from it, and --progress json's lines turned an EUC-JP prompt's '猫' into 'ǭ'."""
    import os

    from hires.output import name_text, stem_part

    monkeypatch.setattr(os, "fsencode", lambda t: t.encode("euc_jp", "surrogateescape"))
    monkeypatch.setattr(os, "fsdecode", lambda b: b.decode("euc_jp", "surrogateescape"))
    assert stem_part("a息猫") == "a息猫"
    assert name_text("from '猫 猫'") == "from '猫 猫'"
    utf8 = os.fsdecode("日本の猫.png".encode())  # a UTF-8 name: kanji and surrogates here
    assert name_text(utf8) == "日本の猫.png"
    assert os.fsencode(stem_part(utf8[:-4])) == "日本の猫".encode()


def test_a_job_files_non_ascii_output_is_written_in_utf8_in_a_c_locale(tmp_path):
    """`output = "café-{index}.png"` failed with a UnicodeEncodeError (exit 1) in a C locale,
    whose ASCII cannot hold it; gen's -o took the same name."""
    jobs = tmp_path / "m.toml"
    jobs.write_text('[[job]]\nprompt = "a"\noutput = "café-{index}.png"\nmodel = "tiny"\n'
                    'size = 64\nsteps = 1\n', encoding="utf-8")
    done = subprocess.run([*hires_cmd("batch"), str(jobs), "-o", str(tmp_path / "out"), "-q",
                           "--dry-run"], capture_output=True, cwd=REPO, timeout=300,
                          env=subprocess_env(**C_LOCALE))
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert "café-0.png".encode() in done.stdout + done.stderr


def test_prompts_and_jobs_on_stdin_that_are_not_utf8_say_the_line_and_a_way(tmp_path):
    """"the prompts on stdin are not UTF-8 text", with no line among thousands, and no way."""
    env = subprocess_env(LANG="C.UTF-8")
    runs = {"prompts": ([*hires_cmd("gen"), "-", "--model", "tiny", "--dry-run"],
                        "ok\nfine\ncaf\xe9\n".encode("latin-1")),
            "jobs": ([*hires_cmd("batch"), "-", "--model", "tiny", "--dry-run",
                      "-o", str(tmp_path)], '{"prompt": "a"}\n{"prompt": "caf\xe9"}\n'
                     .encode("latin-1"))}
    for what, (args, data) in runs.items():
        done = subprocess.run(args, input=data, capture_output=True, env=env, cwd=REPO,
                              timeout=300)
        assert done.returncode == 2
        said = done.stderr.decode().strip().splitlines()[-1]
        line = 3 if what == "prompts" else 2
        assert said.startswith(f"error: the {what} on stdin: not UTF-8 text (line {line}, ")
        assert said.endswith("give them as UTF-8 (iconv -f latin1 -t utf-8 converts Latin-1)")


def test_prompts_and_jobs_on_stdin_in_utf16_with_its_mark_are_read(tmp_path):
    """Windows' "Unicode" text and PowerShell's pipes: UTF-16 with a byte-order mark was
    refused as not UTF-8, with advice (iconv from Latin-1) that made nonsense of it."""
    env = subprocess_env(LANG="C.UTF-8")
    done = subprocess.run([*hires_cmd("gen"), "-", "--model", "tiny", "--size", "256",
                           "--dry-run", "--json"], input="a fox\ncafé 猫\n".encode("utf-16"),
                          capture_output=True, env=env, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    images = json.loads(done.stdout.splitlines()[0])["images"]
    assert [i["prompt"] for i in images] == ["a fox", "café 猫"]
    jobs = '{"prompt": "café", "model": "tiny", "size": 256}\n'.encode("utf-16-be")
    done = subprocess.run([*hires_cmd("batch"), "-", "--dry-run", "--json", "-o", str(tmp_path)],
                          input=b"\xfe\xff" + jobs, capture_output=True, env=env, cwd=REPO,
                          timeout=300)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert json.loads(done.stdout.splitlines()[0])["status"] == "to make"



def test_job_files_in_utf16_are_read_and_one_cut_short_is_said_so(tmp_path):
    """A UTF-16 job file was read from stdin but refused by its path ("not UTF-8 text"); one
    cut short was told to convert from Latin-1, which garbles it."""
    from helpers_cli import cli, error_lines

    toml = '[[job]]\nprompt = "café"\nmodel = "tiny"\nsize = 256\n'
    jsonl = '{"prompt": "a\u2028b", "model": "tiny", "size": 256}\n'  # U+2028: no line break
    for name, text in (("j.toml", toml), ("j.jsonl", jsonl)):
        path = tmp_path / name
        path.write_bytes(text.encode("utf-16"))
        done = cli("batch", path, "--dry-run", "-o", tmp_path / "out")
        assert done.exit_code == 0, done.stderr
        assert "total: 1 to make" in done.stdout
        path.write_bytes(text.encode("utf-16")[:-1])  # its last line break cut in two
        done = cli("batch", path, "--dry-run", "-o", tmp_path / "out")
        assert done.exit_code == 2
        assert error_lines(done.stderr) == [
            f"error: {path}: UTF-16 text (its byte-order mark says so), broken or cut short "
            f"(line {text.count(chr(10))}, byte {len(text.encode('utf-16')) - 2}); give it "
            "whole, as UTF-16 or UTF-8"]
    path = tmp_path / "l.jsonl"
    path.write_bytes(b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n')
    assert error_lines(cli("batch", path, "--dry-run").stderr) == [
        f"error: {path}: not UTF-8 text (line 2, byte 31); save it as UTF-8 (iconv -f latin1 "
        "-t utf-8 converts Latin-1)"]


def test_utf32_files_and_lone_cr_lines_are_read_and_said_right(tmp_path):
    """UTF-32's little-endian mark starts with UTF-16's: a UTF-32 job file was read as UTF-16
    ("not valid JSON"); a bad byte after lines ending in '\\r' alone was said to be on line 1."""
    from helpers_cli import cli, error_lines

    path = tmp_path / "u32.jsonl"
    path.write_bytes('{"prompt": "a", "model": "tiny", "size": 256}\n'.encode("utf-32"))
    done = cli("batch", path, "--dry-run", "-o", tmp_path / "out")
    assert done.exit_code == 0 and "total: 1 to make" in done.stdout, done.stderr
    preset = tmp_path / "p32.toml"
    preset.write_bytes("size = 256\n".encode("utf-32"))
    done = cli("gen", "x", "--preset", preset, "--model", "tiny", "--dry-run")
    assert done.exit_code == 0 and done.stdout.startswith("256x256"), done.stderr
    path = tmp_path / "cr.jsonl"
    path.write_bytes(b'{"prompt": "a"}\r{"prompt": "b"}\r{"prompt": "caf\xe9"}\r')
    assert error_lines(cli("batch", path, "--dry-run").stderr) == [
        f"error: {path}: not UTF-8 text (line 3, byte 47); save it as UTF-8 (iconv -f latin1 "
        "-t utf-8 converts Latin-1)"]
