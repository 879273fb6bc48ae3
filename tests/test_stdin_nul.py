"""NUL bytes on stdin and in prompts: paths or prompts each ended by a NUL (`find -print0`)
are read as entries, UTF-16 text without its byte-order mark is said as such, and a control
character in a prompt is refused, never run or written into a file's metadata."""

import io

import numpy as np
import pytest
from helpers_cli import assert_usage_error, cli, json_lines
from PIL import Image

import hires


def png(path, seed: int = 0) -> None:
    noise = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), np.uint8)
    Image.fromarray(noise).save(path)


def test_paths_ended_by_nul_are_upscaled_each_whole(tmp_path, monkeypatch, asked):
    """`find . -print0 | hires up -` failed with "ValueError: embedded null byte" (exit 1)."""
    names = [tmp_path / "a.png", tmp_path / "two\nlines.png", tmp_path / " b b.png"]
    for i, name in enumerate(names):
        png(name, i)
    piped = b"".join(bytes(name) + b"\0" for name in names)
    result = cli("up", "-", "--scale", "2", "--model", "tiny", "--dry-run", "--json",
                 "-o", f"{tmp_path / 'out'}/", input=piped)
    assert result.exit_code == 0, result.stderr
    assert [r["job"]["image"] for r in json_lines(result.stdout)] == [str(n) for n in names]
    # short names put a NUL inside the first bytes read to tell a list from an image's bytes
    monkeypatch.chdir(tmp_path)
    short = cli("up", "-", "--scale", "2", "--model", "tiny", "--dry-run", "--json",
                "-o", "out/", input=b"a.png\0 b b.png\0")
    assert short.exit_code == 0, short.stderr
    assert [r["job"]["image"] for r in json_lines(short.stdout)] == ["a.png", " b b.png"]


def test_prompts_ended_by_nul_are_read_as_entries(tmp_path):
    result = cli("gen", "-", "--model", "tiny", "--size", "128", "--dry-run", "--json",
                 "-o", f"{tmp_path}/", input=b"a fox\0the\nsea\0\0  \0")
    assert result.exit_code == 0, result.stderr
    prompts = [image["prompt"] for image in json_lines(result.stdout)[0]["images"]]
    assert prompts == ["a fox", "the\nsea"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_utf16_without_its_mark_is_said(tmp_path, codec):
    """It ran three images of "a\\0 \\0f\\0o\\0x\\0" and friends; a job file or preset in it
    was "not valid TOML: Invalid initial character for a key part"."""
    name = codec.upper().replace("-", "").replace("UTF16", "UTF-16")
    prompts = cli("gen", "-", "--model", "tiny", "--size", "128", "--dry-run",
                  "-o", f"{tmp_path}/", input="a fox\nthe sea\n".encode(codec))
    assert_usage_error(prompts, f"the prompts on stdin: {name} text without its byte-order "
                       f"mark; save it as UTF-8 (iconv -f {name.lower()} -t utf-8")
    jobs = tmp_path / "jobs.toml"
    jobs.write_bytes('[[job]]\nprompt = "a fox"\n'.encode(codec))
    batch = cli("batch", jobs, "--dry-run", "-o", tmp_path / "out")
    assert_usage_error(batch, f"{jobs}: {name} text without its byte-order mark")
    piped = cli("batch", "-", "--dry-run", "-o", tmp_path / "out",
                input='[[job]]\nprompt = "a fox"\n'.encode(codec))
    assert_usage_error(piped, f"the jobs on stdin: {name} text without its byte-order mark")
    with_mark = cli("gen", "-", "--model", "tiny", "--size", "128", "--dry-run", "--json",
                    "-o", f"{tmp_path}/", input="a fox\nthe sea\n".encode("utf-16"))
    assert with_mark.exit_code == 0, with_mark.stderr


def test_a_control_character_in_a_prompt_is_refused_where_it_came_from(tmp_path):
    """ESC and NUL in a prompt ran, and went into the image's metadata and JSON."""
    with pytest.raises(hires.JobError, match=r"the prompt holds a control character "
                       r"\(U\+001B, character 6\); remove it"):
        hires.generate("a fox\x1b[31m", model="tiny", size=128)
    with pytest.raises(hires.JobError, match=r"the negative holds a NUL character "
                       r"\(U\+0000, character 2\): UTF-16 text read as UTF-8\?"):
        hires.generate("a fox", negative="b\x00", model="tiny", size=128)
    stdin = cli("gen", "-", "--model", "tiny", "--size", "128", "--dry-run",
                "-o", f"{tmp_path}/", input="a fox\nbell\x07\n")
    assert_usage_error(stdin, "prompt 2 on stdin holds a control character (U+0007, "
                       "character 5); remove it")
    jobs = tmp_path / "jobs.toml"
    jobs.write_text('[[job]]\nprompt = "a fox"\n[[job]]\nprompt = "a\\u009bb"\n')
    batch = cli("batch", jobs, "--dry-run", "-o", tmp_path / "out")
    assert_usage_error(batch, "'prompt' in jobs.toml job 1 holds a control character "
                       "(U+009B, character 2); remove it")
    # tabs and line ends are whitespace to the encoders: still taken
    fine = cli("gen", "a\tfox\r\nin snow", "--model", "tiny", "--size", "128", "--dry-run",
               "-o", f"{tmp_path}/")
    assert fine.exit_code == 0, fine.stderr
    assert list(tmp_path.iterdir()) == [jobs]


def test_binary_heads_stay_binary_and_nul_ended_text_is_text():
    from hires.piped import looks_binary

    safetensors = (0x4A7B).to_bytes(8, "little") + b'{"a'  # a length whose bytes print
    assert looks_binary(safetensors[:12])
    data = io.BytesIO()
    Image.new("RGB", (4, 4)).save(data, format="BMP")
    assert looks_binary(data.getvalue()[:12])
    assert not looks_binary(b"./a.png\0./b")
    assert not looks_binary("a fox\n".encode("utf-16-le")[:12])
    assert looks_binary(b"\0\0\0 ftypavif")


@pytest.mark.parametrize("text,codec,name", [
    ("猫\n", "utf-16-le", "UTF-16LE"), ("猫の絵\n", "utf-16-be", "UTF-16BE"),
    ("a fox\n", "utf-32-le", "UTF-32LE"), ("一只猫\n", "utf-32-be", "UTF-32BE")])
def test_cjk_utf16_and_utf32_without_a_mark_are_said_too(tmp_path, text, codec, name):
    """UTF-16 CJK has few NULs: '猫' became the prompt "+s"; UTF-32 was split at its NULs into
    one prompt a letter (found by QA)."""
    result = cli("gen", "-", "--model", "tiny", "--size", "128", "--dry-run",
                 "-o", f"{tmp_path}/", input=text.encode(codec))
    assert_usage_error(result, f"the prompts on stdin: {name} text without its byte-order mark")
    jobs = tmp_path / "jobs.jsonl"  # a JSONL file too: each of its lines was "not valid JSON"
    jobs.write_bytes('{"prompt": "a", "model": "tiny"}\n'.encode(codec))
    assert_usage_error(cli("batch", jobs, "--dry-run", "-o", tmp_path / "o"),
                       f"{jobs}: {name} text without its byte-order mark")


def test_nul_ended_paths_take_an_empty_entry_and_an_echoed_newline(tmp_path, monkeypatch,
                                                                   asked):
    """Two NULs together were taken for an image's bytes; a last path ended by echo's newline
    kept it (found by QA)."""
    monkeypatch.chdir(tmp_path)
    png(tmp_path / "a.png")
    png(tmp_path / "my fox.png", 1)
    for piped in (b"a.png\0\0my fox.png\0", b"a.png\0my fox.png\n"):
        result = cli("up", "-", "--scale", "2", "--model", "tiny", "--dry-run", "--json",
                     "-o", "out/", input=piped)
        assert result.exit_code == 0, result.stderr
        assert [r["job"]["image"] for r in json_lines(result.stdout)] == ["a.png", "my fox.png"]
