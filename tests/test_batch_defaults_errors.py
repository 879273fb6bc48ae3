"""A bad [defaults] value is said once, and the jobs' own errors behind it are said with it:
it was said once a job (the same line twenty times, hiding the rest) and the jobs' own errors
only once it was fixed."""

import pytest
from helpers_cli import cli, error_lines, write
from PIL import Image


def test_a_bad_default_is_said_once_and_the_jobs_errors_beside_it(tmp_path):
    jobs = "".join(f'[[job]]\nprompt = "p{i}"\n' for i in range(25))
    path = write(tmp_path / "many.toml", '[defaults]\nsize = "128"\nmodel = "tiny"\n' + jobs
                 + '[[job]]\nprompt = "q"\nsteps = 2.0\n')
    result = cli("batch", path, "-o", tmp_path / "out", "--dry-run")
    assert result.exit_code == 2 and result.stdout == ""
    assert error_lines(result.stderr) == [
        "error: 'size' in many.toml [defaults] must be a whole number of pixels (write it "
        'without quotes), got "128"',
        "error: 'steps' in many.toml job 25 must be a whole number (write it without a decimal "
        "point), got 2.0"]
    assert not (tmp_path / "out").exists()


def test_each_bad_default_and_each_jobs_own_error_at_once(tmp_path):
    path = write(tmp_path / "few.toml", '[defaults]\nsize = "128"\nsteps = 0\nmodel = "tiny"\n'
                 '[[job]]\nprompt = "a"\nsteps = 2.0\n'
                 '[[job]]\nseed = 3\n'
                 '[[job]]\nprompt = "c"\nsampler = "nope"\n'
                 '[[job]]\nprompt = "d"\n')
    result = cli("batch", path, "-o", tmp_path / "out", "--dry-run")
    assert result.exit_code == 2
    assert error_lines(result.stderr) == [
        "error: 'steps' in few.toml job 0 must be a whole number (write it without a decimal "
        "point), got 2.0",
        "error: 'size' in few.toml [defaults] must be a whole number of pixels (write it "
        'without quotes), got "128"',
        "error: 'steps' in few.toml [defaults] must be a whole number from 1 to 1000, got 0",
        "error: few.toml job 1 has no prompt; give it a 'prompt' (or an 'image' to upscale)",
        "error: 'sampler' in few.toml job 2 must be one of euler, dpmpp-2m; got 'nope'"]


def test_no_error_is_made_up_by_leaving_a_bad_default_out(tmp_path):
    # Without [defaults]' prompt, no job has one: that is the bad prompt's error, not theirs.
    path = write(tmp_path / "p.toml", '[defaults]\nprompt = 5\nsize = 128\nmodel = "tiny"\n'
                 '[[job]]\nseed = 1\n[[job]]\nseed = 2\nsteps = 0\n')
    result = cli("batch", path, "-o", tmp_path / "out", "--dry-run")
    assert result.exit_code == 2
    assert error_lines(result.stderr) == [
        "error: 'prompt' in p.toml [defaults] must be text, got 5",
        "error: 'steps' in p.toml job 1 must be a whole number from 1 to 1000, got 0"]


def test_no_error_is_made_of_a_default_left_out(tmp_path):
    """Left out, a bad size made its aspect 'need a long side', a bad width its height 'go
    with a width', a bad image a job's scale 'for upscales': none of them the file's errors."""
    for defaults, said in [
            ('size = "x"\naspect = "16:9"', "'size' in d.toml [defaults] must be a whole number"),
            ('width = "x"\nheight = 128', "'width' in d.toml [defaults] must be a whole number"),
            ("image = 5", "'image' in d.toml [defaults] must be text, got 5")]:
        path = write(tmp_path / "d.toml", f'[defaults]\n{defaults}\nmodel = "tiny"\n'
                     '[[job]]\nprompt = "a"\nscale = 2\n' if "image" in defaults else
                     f'[defaults]\n{defaults}\nmodel = "tiny"\n[[job]]\nprompt = "a"\n')
        lines = error_lines(cli("batch", path, "-o", tmp_path / "out", "--dry-run").stderr)
        assert len(lines) == 1 and said in lines[0], lines


def test_defaults_said_by_the_job_are_said_once_and_dashed_keys_too(tmp_path):
    """A [defaults] 'output' or stdin 'image' was said as each job's (one line a job, hiding
    theirs); a dashed key (vae-tile), said as 'vae_tile', hid the jobs' errors."""
    for defaults, said in [
            ("output = 5", "'output' in d.toml [defaults] must be a file name, got 5"),
            ('image = "-"', "'image' in d.toml [defaults] is '-' (stdin)"),
            ('vae-tile = "x"', "'vae_tile' in d.toml [defaults] must be a whole number")]:
        path = write(tmp_path / "d.toml", f'[defaults]\n{defaults}\nmodel = "tiny"\nsize = 128\n'
                     '[[job]]\nprompt = "a"\n[[job]]\nprompt = "b"\nsteps = 0\n')
        lines = error_lines(cli("batch", path, "-o", tmp_path / "out", "--dry-run").stderr)
        assert len(lines) == 2 and said in lines[0], lines
        assert lines[1] == ("error: 'steps' in d.toml job 1 must be a whole number from 1 "
                            "to 1000, got 0")


def test_a_default_the_output_checks_refuse_is_said_once(tmp_path):
    """A [defaults] LoRA that is not there, or a JPEG of depth 16 there, was said once a job
    by the output checks ('26 errors', all but one alike)."""
    jobs = "".join(f'[[job]]\nprompt = "p{i}"\n' for i in range(25))
    for defaults, said in [
            ('lora = "missing.safetensors"', "error: 'lora' in d.toml [defaults]: "
             "missing.safetensors: no such file or folder"),
            ('format = "jpg"\ndepth = 16', "error: d.toml [defaults]: JPEG holds 8 bits a "
             "channel")]:
        path = write(tmp_path / "d.toml", f'[defaults]\n{defaults}\nmodel = "tiny"\nsize = 128\n'
                     + jobs + '[[job]]\nprompt = "q"\nsteps = 0\n[[job]]\nprompt = "r"\n'
                     'format = "png"\nlora = "none"\n')
        result = cli("batch", path, "-o", tmp_path / "out", "--dry-run")
        lines = error_lines(result.stderr)
        assert result.exit_code == 2 and len(lines) == 2, result.stderr
        assert lines[0].startswith("error: 'steps' in d.toml job 25 must be")
        assert lines[1].startswith(said), lines


def test_a_bad_preset_print_size_or_own_key_hides_no_error_and_makes_none(tmp_path):
    """Left out, a bad preset's size made a job's aspect 'need a long side' (made up); a bad
    print_size ('print size must ...') hid the jobs' errors; a job's own bad sampler hid the
    [defaults] one it also had."""
    cases = [
        ('preset = "nope"', '[[job]]\nprompt = "a"\naspect = "16:9"\n',
         ["error: 'preset' in d.toml [defaults]: unknown preset 'nope'"]),
        ('print_size = "bad"', '[[job]]\nprompt = "a"\nsteps = 0\n[[job]]\nprompt = "c"\n',
         ["error: d.toml [defaults]: print size must look like",
          "error: 'steps' in d.toml job 0 must be a whole number from 1 to 1000, got 0"]),
        ('sampler = "nope"\nsize = 128', '[[job]]\nprompt = "a"\nsampler = "bad"\n'
         '[[job]]\nprompt = "c"\nsteps = 0\n',
         ["error: 'sampler' in d.toml job 0 must be one of", "error: 'sampler' in d.toml "
          "[defaults] must be one of", "error: 'steps' in d.toml job 1 must be a whole number"])]
    for defaults, jobs, said in cases:
        path = write(tmp_path / "d.toml", f'[defaults]\n{defaults}\nmodel = "tiny"\n{jobs}')
        lines = error_lines(cli("batch", path, "-o", tmp_path / "out", "--dry-run").stderr)
        assert len(lines) == len(said), lines
        assert all(line.startswith(start) for line, start in zip(lines, said, strict=True)), lines


def test_an_error_of_a_key_left_out_is_not_said_and_hides_nothing(tmp_path):
    """Left out, a bad ip_image made its ip_scale 'have nothing to scale' (made up: said 'add
    ip_image', unquoted); a bad width left its height alone, and the job's other four errors
    waited; a [defaults] JPEG of depth 16 was said again by each job with its own size."""
    path = write(tmp_path / "j.jsonl",
                 '{"prompt": "a", "ip_image": 7, "ip_scale": 0.5}\n'
                 '{"prompt": "a", "width": "z", "height": 1024, "depth": 7, "format": "bmp", '
                 '"sampler": "nope"}\n')
    lines = error_lines(cli("batch", path, "--model", "tiny", "-o", tmp_path / "out",
                            "--dry-run").stderr)
    assert [line.split(" must ")[0] for line in lines] == [
        "error: 'ip_image' in j.jsonl job 0 (line 1)", "error: 'width' in j.jsonl job 1 (line 2)",
        "error: 'depth' in j.jsonl job 1 (line 2)", "error: 'format' in j.jsonl job 1 (line 2)",
        "error: 'sampler' in j.jsonl job 1 (line 2)"], lines
    path = write(tmp_path / "d.toml", '[defaults]\nformat = "jpg"\ndepth = 16\nmodel = "tiny"\n'
                 '[[job]]\nprompt = "a"\nsize = 1024\n[[job]]\nprompt = "b"\nsize = 2048\n'
                 '[[job]]\nprompt = "c"\n')
    lines = error_lines(cli("batch", path, "-o", tmp_path / "out", "--dry-run").stderr)
    assert len(lines) == 1 and lines[0].startswith("error: d.toml [defaults]: JPEG holds 8 bits")


def test_an_unknown_default_key_hides_no_job_s_error_of_its_own_keys(tmp_path):
    """An unknown [defaults] key (or a seed of 1.5 there) stopped the read: the jobs' own
    errors came one fix-and-run later (QA 194). The jobs are read without it, but it may be a
    misspelt key they need ('promt'): only their errors of their own keys are said, not one
    "has no prompt" a job (QA 195)."""
    path = write(tmp_path / "k.toml", '[defaults]\nmodel = "tiny"\npromt = "a cat"\n'
                 'seed = 1.5\nsize = 64\n' + '[[job]]\nseed = 1\n' * 25 +
                 '[[job]]\nsize = 64.0\n[[job]]\nprompt = "c"\nn = 3\n')
    result = cli("batch", path, "-o", tmp_path / "out", "--dry-run")
    assert result.exit_code == 2 and result.stdout == ""
    said = error_lines(result.stderr)
    assert said[0].startswith("error: unknown key 'promt' in k.toml [defaults] (did you mean "
                              "'prompt'?)")
    assert said[1:] == [
        "error: 'seed' in k.toml [defaults] must be a whole number (no quotes, no decimal "
        "point), got 1.5",
        "error: 'size' in k.toml job 25 must be a whole number of pixels (write it without a "
        "decimal point), got 64.0",
        "error: unknown key 'n' in k.toml job 26 (--n is a command's flag, not a key: a batch "
        "makes one image a job: give a job for each image)"]
    fixed = write(tmp_path / "f.toml", '[defaults]\nmodel = "tiny"\nseed = 1.5\nsize = 64\n'
                  '[[job]]\nseed = 1\n')  # a bad seed alone hides nothing: seeds are drawn
    assert error_lines(cli("batch", fixed, "-o", tmp_path / "out", "--dry-run").stderr)[1:] == [
        "error: f.toml job 0 has no prompt; give it a 'prompt' (or an 'image' to upscale)"]


def test_a_misspelt_default_hides_no_bad_default_nor_makes_errors_up(tmp_path):
    """The first fix kept only errors naming a job's own key: a bad [defaults] value beside
    'promt' went unsaid, a job's dashed key's error too, and 'imag' or 'sise' still made
    errors up ('scale' is for upscales; 'aspect' needs a long side) (QA 197)."""
    path = write(tmp_path / "a.toml", '[defaults]\npromt = "a fox"\nsize = "64x64"\n'
                 'model = "tiny"\n[[job]]\nseed = 1\n[[job]]\nvae-tile = -3\n')
    said = error_lines(cli("batch", path, "-o", tmp_path / "out", "--dry-run").stderr)
    assert [line.split(" must")[0].split(" (did")[0] for line in said] == [
        "error: unknown key 'promt' in a.toml [defaults]", "error: 'size' in a.toml [defaults]",
        "error: 'vae_tile' in a.toml job 1"]
    Image.new("RGB", (64, 64)).save(tmp_path / "in.png")
    for defaults, job in ((f'imag = "{tmp_path / "in.png"}"', "scale = 2"),
                          ('sise = 128', 'aspect = "16:9"')):
        path = write(tmp_path / "b.toml", f'[defaults]\n{defaults}\nprompt = "x"\n'
                     f'model = "tiny"\n[[job]]\n{job}\n')
        said = error_lines(cli("batch", path, "-o", tmp_path / "out", "--dry-run").stderr)
        assert len(said) == 1 and said[0].startswith("error: unknown key"), said


@pytest.mark.parametrize("typo", ['prest = "nonexistent"', 'aspcet = "16:9"'])
def test_a_misspelt_default_whose_guess_fails_hides_no_job_error(tmp_path, typo):
    """'prest' read as 'preset' (an unknown preset), or 'aspcet' as an aspect too wide for
    the size, failed in [defaults] and hid every job's error from the guessed read, so none
    was said (QA 199)."""
    path = write(tmp_path / "g.toml", f'[defaults]\nmodel = "tiny"\nsize = 64\nprompt = "a"\n'
                 f'{typo}\n[[job]]\n[[job]]\nsteps = 0\n')
    said = error_lines(cli("batch", path, "-o", tmp_path / "out", "--dry-run").stderr)
    assert len(said) == 2 and said[0].startswith("error: unknown key"), said
    assert said[1].startswith("error: 'steps' in g.toml job 1 must be a whole number")


def test_a_misspelt_preset_makes_up_no_error_of_what_the_preset_gives(tmp_path):
    """'prest' naming a preset that gives the prompt and size, beside an aspect that fails at
    that size: every job was told it "has no prompt" (QA 200)."""
    preset = write(tmp_path / "p.toml", 'size = 64\nprompt = "from the preset"\n')
    path = write(tmp_path / "m.toml", f'[defaults]\nmodel = "tiny"\nprest = "{preset}"\n'
                 'aspect = "16:9"\nsteps = 2\n[[job]]\nseed = 1\n[[job]]\nsteps = 0\n')
    said = error_lines(cli("batch", path, "-o", tmp_path / "out", "--dry-run").stderr)
    assert said[0].startswith("error: unknown key 'prest'") and len(said) == 2, said
    assert said[1].startswith("error: 'steps' in m.toml job 1 must be a whole number")


def test_a_default_s_error_naming_its_key_unquoted_hides_no_job_s_error(tmp_path):
    """"[defaults]: aspect = 16:9 at size = 64 makes the short side 32 px" did not name
    'aspect' as the re-check reads keys, so the jobs behind it were never checked (QA 200)."""
    path = write(tmp_path / "n.toml", '[defaults]\nmodel = "tiny"\naspect = "16:9"\nsize = 64\n'
                 'prompt = "x"\n[[job]]\nseed = 1\n[[job]]\nsteps = 0\n')
    said = error_lines(cli("batch", path, "-o", tmp_path / "out", "--dry-run").stderr)
    assert said[0].startswith("error: n.toml [defaults]: aspect = 16:9 at size = 64 makes")
    assert said[1:] == ["error: 'steps' in n.toml job 1 must be a whole number from 1 to 1000, "
                        "got 0"]


@pytest.mark.parametrize("ext", ["toml", "jsonl"])
def test_a_jobs_own_misspelt_key_makes_up_no_error_of_the_key_it_meant(tmp_path, ext):
    """A job's own 'promt' said "unknown key 'promt' ... (did you mean 'prompt'?)" and then
    "has no prompt" for the same job; its other errors are still said."""
    body = ('[defaults]\nmodel = "tiny"\nsize = 64\n[[job]]\npromt = "a cat"\nsteps = 0\n'
            if ext == "toml" else '{"model": "tiny", "size": 64, "promt": "a cat", "steps": 0}\n')
    said = error_lines(cli("batch", write(tmp_path / f"j.{ext}", body), "-o", tmp_path / "out",
                           "--dry-run").stderr)
    assert len(said) == 2, said
    assert said[0].startswith("error: unknown key 'promt' in j.") and "'prompt'?" in said[0]
    assert said[1].startswith("error: 'steps' in j.") and "must be a whole number" in said[1]


def test_a_misspelt_key_hides_no_error_of_the_key_it_meant_where_that_is_given(tmp_path):
    """'promt' beside a 'prompt = 5' of the job's own: the fix above hid that error too
    (QA 203)."""
    path = write(tmp_path / "t.toml", '[defaults]\nmodel = "tiny"\nsize = 64\n'
                 '[[job]]\npromt = "a cat"\nprompt = 5\n')
    said = error_lines(cli("batch", path, "-o", tmp_path / "out", "--dry-run").stderr)
    assert len(said) == 2 and said[0].startswith("error: unknown key 'promt'"), said
    assert said[1].startswith("error: 'prompt' in t.toml job 0 must be text")


@pytest.mark.parametrize("typo, key, value", [("stepz", "steps", '"x"'),
                                              ("strenght", "strength", "7"),
                                              ("widht", "width", '"a"')])
def test_a_misspelt_key_beside_a_bad_value_of_the_key_it_meant(tmp_path, typo, key, value):
    """'stepz' beside 'steps = "x"': its "(did you mean 'steps'?)" counted 'steps' at fault
    too, so that error was never checked (QA 205)."""
    path = write(tmp_path / "t.toml", f'[defaults]\nmodel = "tiny"\nsize = 64\n[[job]]\n'
                 f'prompt = "x"\n{typo} = 3\n{key} = {value}\n')
    said = error_lines(cli("batch", path, "-o", tmp_path / "out", "--dry-run").stderr)
    assert len(said) == 2 and said[0].startswith(f"error: unknown key '{typo}'"), said
    assert said[1].startswith("error: ") and f"'{key}'" in said[1], said
