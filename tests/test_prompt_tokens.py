"""A prompt longer than SDXL's text encoders read is said, not silently cut."""

import json

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


def test_the_cli_says_it_once_for_many_images_each_recording_it(tmp_path, asked):
    """`--n 3` said the same warning three times."""
    result = cli("gen", LONG, "--model", "tiny", "--size", "128", "--steps", "1", "--n", "3",
                 "--seed", "1", "-o", tmp_path, "--json")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("tokens and SDXL reads 75") == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 3
    assert all(any("SDXL reads 75" in w for w in r["warnings"]) for r in records)


def test_a_dry_run_and_a_plan_say_it_too_from_the_cached_tokenizer(tiny, tiny_folder):
    """`gen --dry-run` and `plan` said nothing of a long prompt: the model is not loaded."""
    from hires.job import Job
    from hires.pipeline import prompt_warnings
    from hires.prompts import cached_tokenizer

    as_run = prompt_warnings(tiny, Job(prompt=LONG, model="tiny"))
    for args in (("gen", LONG, "--model", "tiny", "--size", "256", "--dry-run"),
                 ("plan", LONG, "--model", str(tiny_folder), "--size", "256"),
                 ("plan", "a cat", "--negative", LONG, "--model", "tiny", "--size", "256")):
        result = cli(*args)
        assert result.exit_code == 0, result.stderr
        said = [line for line in result.stderr.splitlines() if "SDXL reads 75" in line]
        assert len(said) == 1, result.stderr
        if args[1] == LONG:
            assert said == [f"warning: {as_run[0]}"]
    assert cached_tokenizer(Job(prompt="a cat", model="tiny")) is None  # nothing to check
    # Not cached (no download for a dry run): nothing is said.
    assert cached_tokenizer(Job(prompt=LONG, model="nobody/nothing-here")) is None
    quiet = cli("plan", LONG, "--model", "nobody/nothing-here", "--size", "1024")
    assert quiet.exit_code == 0 and "SDXL reads" not in quiet.stderr


def test_a_hub_models_tokenizer_is_found_in_the_cache(tiny_folder, tmp_path, monkeypatch):
    """A Hub id's tokenizer comes from the Hugging Face cache, as a run after a download has it;
    a single file's from SDXL base's there."""
    import shutil

    from huggingface_hub import constants

    from hires.job import DEFAULT_MODEL, Job
    from hires.prompts import cached_tokenizer

    for repo in ("someone/their-sdxl", DEFAULT_MODEL):
        snapshot = tmp_path / f"models--{repo.replace('/', '--')}" / "snapshots" / "abc123"
        shutil.copytree(tiny_folder / "tokenizer", snapshot / "tokenizer")
        (snapshot.parents[1] / "refs").mkdir()
        (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    found = cached_tokenizer(Job(prompt=LONG, model="someone/their-sdxl"))
    assert found is not None and len(found.tokenize("a cat")) > 1
    single = tmp_path / "mine.safetensors"
    single.write_bytes(b"{}")
    assert cached_tokenizer(Job(prompt=LONG, model=str(single))) is not None
    assert cached_tokenizer(Job(prompt=LONG, model="someone/else")) is None


def test_dry_runs_of_prompts_from_stdin_and_of_a_batch_say_it_too(tmp_path, asked):
    """`gen - --dry-run` planned the flags' job (no prompt) and `batch --dry-run` never
    looked: neither said what the runs say."""
    read = cli("gen", "-", "--model", "tiny", "--size", "256", "--dry-run", "-o",
               f"{tmp_path}/", input=f"a fox\n{LONG}\n")
    assert read.exit_code == 0, read.stderr
    assert read.stderr.count("tokens and SDXL reads 75") == 1
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(f'[defaults]\nmodel = "tiny"\nsize = 256\n[[job]]\nprompt = "a fox"\n'
                    f'[[job]]\nprompt = "{LONG}"\n')
    batch = cli("batch", jobs, "-o", tmp_path / "out", "--dry-run")
    assert batch.exit_code == 0, batch.stderr
    assert "warning: job 1: the prompt is " in batch.stderr
    assert batch.stderr.count("tokens and SDXL reads 75") == 1
    assert asked == []


def test_a_long_prompt_from_python_is_said_once_in_the_results_warnings_not_on_stderr():
    """transformers' 'Token indices sequence length is longer ...' and diffusers' 'The
    following part of your input was truncated' reached a library caller's stderr."""
    import subprocess
    import sys

    from helpers_cli import subprocess_env

    env = {k: v for k, v in subprocess_env().items()
           if k not in ("DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY")}  # hires.cli's
    script = ("import hires, sys; r = hires.generate(sys.argv[1], model='tiny', size=256, "
              "steps=1, vae_dtype='fp32'); print(len(r.warnings))")
    done = subprocess.run([sys.executable, "-c", script, LONG], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1" and done.stderr == ""


def test_the_cut_is_shown_from_a_whole_character(tiny):
    """A cut inside a character's bytes began the quote with a U+FFFD."""
    from hires.job import Job
    from hires.prompts import too_long

    said = too_long(tiny.pipe.tokenizer, Job(prompt="🦊" * 100))
    assert len(said) == 1 and "from '🦊🦊" in said[0] and "\ufffd" not in said[0], said


def test_the_cut_is_quoted_from_the_users_own_text(tiny):
    """The quote was the tokenizer's decoding: lower-cased and spaced ("word 1 4" for
    "Word14"). It is the user's text from the word the limit falls in."""
    from hires.job import Job
    from hires.prompts import too_long

    tokenizer = tiny.pipe.tokenizer
    prompt = " ".join(f"Word{i}" for i in range(80))
    said = too_long(tokenizer, Job(prompt=prompt))
    quoted = said[0].split("from '")[1].split("'")[0].removesuffix("...")
    start = prompt.index(quoted)
    first = quoted.split()[0]
    assert first.startswith("Word") and prompt[start - 1] == " ", said
    assert len(tokenizer.tokenize(prompt[:start])) <= 75  # read in full before the quote
    assert len(tokenizer.tokenize(prompt[:start + len(first)])) > 75  # the word passes it
    # a long run without spaces is cut at the character, with what is read left out
    run = "x" * 30 + " " + "y" * 200
    said = too_long(tokenizer, Job(prompt=run))
    assert "from 'yyyy" in said[0]


def test_the_quote_starts_at_a_letter_or_a_tag_and_on_one_line(tiny):
    """A combining accent began the quote alone, a tag list was quoted from mid-word, and
    line breaks were quoted as they are (found by QA)."""
    from hires.job import Job
    from hires.prompts import too_long

    tokenizer = tiny.pipe.tokenizer

    def quote(prompt: str) -> str:
        return too_long(tokenizer, Job(prompt=prompt))[0].split("from '")[1].rsplit("'", 1)[0]

    assert quote("e\u0301" * 80).startswith("e\u0301")
    tags = quote("masterpiece,best_quality,ultra_detailed,photorealistic," * 6)
    assert tags.split(",")[0] in ("masterpiece", "best_quality", "ultra_detailed",
                                  "photorealistic"), tags
    assert "\n" not in quote("a  \n\n  b " * 60)
