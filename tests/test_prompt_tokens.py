"""A prompt longer than SDXL's text encoders read is said, not silently cut."""

from helpers_cli import cli

LONG = " ".join(["a beautiful red cat sitting on a blue mat"] * 20)


def test_a_long_prompt_or_negative_is_said_and_a_short_one_is_not(tiny):
    from hires import generate

    common = dict(components=tiny, width=256, height=256, steps=1, seed=1)
    said = generate(LONG, negative="blurry", **common).warnings
    assert len(said) == 1 and said[0].startswith("the prompt is ") and "SDXL reads 75" in said[0]
    assert "from 'beautiful red cat" in said[0]  # where the cut falls, from a word's start
    said = generate("a cat", negative=LONG, **common).warnings
    assert len(said) == 1 and said[0].startswith("the negative prompt is ")
    assert generate("a cat", **common).warnings == []


def test_the_cli_says_it_once_before_the_work(tmp_path, asked):
    result = cli("gen", LONG, "--model", "tiny", "--size", "256", "--steps", "1",
                 "-o", tmp_path / "x.png")
    assert result.exit_code == 0, result.stderr
    lines = result.stderr.splitlines()
    said = [i for i, line in enumerate(lines) if "tokens and SDXL reads 75" in line]
    assert len(said) == 1 and lines[said[0]].startswith("warning: the prompt is ")
    assert not any("vae-decode" in line for line in lines[:said[0]])  # before the work
