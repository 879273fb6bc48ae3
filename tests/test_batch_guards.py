"""Batch checks before any work: an output over its own input, a suffix against `format`, errors
that name the file, job and key, and a manifest that is (or will be) a folder."""

import errno
import json
from pathlib import Path

import pytest
from helpers_cli import cli, error_lines, json_lines, write

from hires.batch import BatchItem, run_batch
from hires.job import Job
from hires.output import OutputError

DEFAULTS = '[defaults]\nmodel = "tiny"\nsteps = 1\nwidth = 64\nheight = 64\n'


def refused(result) -> str:
    """The one error line of a batch refused as a usage error (exit 2) before any image."""
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    return lines[0]


def second_job(tmp_path: Path, keys: str) -> Path:
    """A job file whose job 1 has `keys` (TOML lines); job 0 is fine."""
    return write(tmp_path / "j.toml", f'{DEFAULTS}[[job]]\nprompt = "a"\n[[job]]\nprompt = "b"\n'
                                      f"{keys}\n")


# --- 1. an output that is the job's own input ----------------------------------------------------

def test_a_job_writing_over_its_own_input_is_refused_even_with_overwrite(small, tmp_path):
    """It exited 0 with --overwrite, the user's input replaced by the upscale."""
    jobs = write(tmp_path / "self.toml", f'{DEFAULTS}[[job]]\nimage = "{small}"\nscale = 2\n'
                                         'output = "in.png"\n')
    before = small.read_bytes()
    for extra in ((), ("--dry-run",), ("--overwrite",), ("--overwrite", "--dry-run")):
        line = refused(cli("batch", jobs, "-o", small.parent, *extra))
        assert "self.toml job 0" in line and f"{small} is the input image" in line, line
        assert "choose another 'output'" in line
    assert small.read_bytes() == before
    assert sorted(p.name for p in small.parent.iterdir()) == ["in.png", "self.toml"]


def test_a_jobs_output_through_a_folder_not_made_yet_is_not_its_input(small, tmp_path):
    """`output = "../in.png"` under an -o not made yet replaced the input with --overwrite,
    and the dry run listed it to make."""
    jobs = write(tmp_path / "up.toml", f'{DEFAULTS}[[job]]\nimage = "{small}"\nscale = 2\n'
                                       'output = "../in.png"\n')
    before = small.read_bytes()
    for extra in (("--dry-run",), ("--overwrite",)):
        line = refused(cli("batch", jobs, "-o", tmp_path / "new", *extra))
        assert "up.toml job 0" in line and "is the input image" in line, line
    assert small.read_bytes() == before and not (tmp_path / "new").exists()


def test_a_jobs_output_of_dot_is_the_folder_made_or_not(tmp_path, asked):
    """`output = "."` under an -o not made yet wrote -o's name plus .png, outside it."""
    jobs = write(tmp_path / "j.toml", f'{DEFAULTS}[[job]]\nprompt = "a"\nseed = 4\n'
                                      'output = "."\n')
    result = cli("batch", jobs, "-o", tmp_path / "new", "-q")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == [
        "job0000_64x64_s4.png", "manifest.jsonl"]
    assert not (tmp_path / "new.png").exists()


def test_a_manifest_reaching_the_job_file_through_a_folder_not_made_yet_is_refused(tmp_path):
    """`--manifest new/../j.toml` appended its JSON lines to the job file: the path was not
    there until the run made new/."""
    jobs = write(tmp_path / "j.toml", f'{DEFAULTS}[[job]]\nprompt = "a"\n')
    before = jobs.read_bytes()
    for extra in (("--dry-run",), ()):
        line = refused(cli("batch", jobs, "-o", tmp_path / "o", "--manifest",
                           tmp_path / "new" / ".." / "j.toml", *extra))
        assert "is the job file" in line, line
    assert jobs.read_bytes() == before and not (tmp_path / "new").exists()


def test_a_manifest_named_as_a_folder_is_refused(tmp_path):
    jobs = write(tmp_path / "j.toml", f'{DEFAULTS}[[job]]\nprompt = "a"\n')
    line = refused(cli("batch", jobs, "-o", tmp_path / "o", "--manifest", f"{tmp_path}/m.txt/"))
    assert f"--manifest {tmp_path}/m.txt is a folder; name a .jsonl file" in line
    assert not (tmp_path / "m.txt").exists()


def test_a_hires_made_input_is_not_moved_aside_for_its_own_job(small, tmp_path, asked):
    """An input made by hires (its settings recorded) passed the dry run; the run moved it aside
    (in.<hash>.png) and the job then failed for want of its input."""
    made = tmp_path / "made" / "up.png"
    assert cli("up", small, "--model", "tiny", "--steps", "1", "--scale", "2", "-o",
               made).exit_code == 0
    jobs = write(tmp_path / "again.toml", f'{DEFAULTS}[[job]]\nimage = "{made}"\nscale = 2\n'
                                          'output = "up.png"\n')
    before = made.read_bytes()
    for extra in (("--dry-run",), ()):
        line = refused(cli("batch", jobs, "-o", made.parent, *extra))
        assert "again.toml job 0" in line and "is the input image" in line, line
    assert made.read_bytes() == before
    assert [p.name for p in made.parent.iterdir()] == ["up.png"]


# --- 2. an output's suffix against an explicit format, png too ----------------------------------

@pytest.mark.parametrize("name", ["x.jpg", "x.tif", "x.webp"])
def test_an_output_suffix_against_an_explicit_png_is_refused(tmp_path, name):
    """format = "png" was taken for the default, and x.jpg written as a JPEG."""
    jobs = second_job(tmp_path, f'output = "{name}"\nformat = "png"')
    for extra in (("--dry-run",), ()):
        line = refused(cli("batch", jobs, "-o", tmp_path / "ot", *extra))
        assert "'output' in j.toml job 1 names a" in line and f"({name})" in line, line
        assert "'format' is png" in line
    assert not (tmp_path / "ot").exists()


def test_a_png_format_from_defaults_counts_as_given(tmp_path):
    jobs = write(tmp_path / "d.toml", f'{DEFAULTS}format = "png"\n[[job]]\nprompt = "a"\n'
                                      'output = "x.jpg"\n')
    line = refused(cli("batch", jobs, "-o", tmp_path / "ot", "--dry-run"))
    assert "'output' in d.toml job 0 names a JPG file" in line, line


def test_an_output_suffix_alone_still_picks_the_format(tmp_path):
    jobs = second_job(tmp_path, 'output = "x.jpg"')
    result = cli("batch", jobs, "-o", tmp_path / "ot", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert "x.jpg" in result.stdout


# --- 3. errors name the file, the job and the key, not a flag -----------------------------------

@pytest.mark.parametrize(("keys", "named"), [
    ('lora = "tl.safetensors:abc"', "'lora' in j.toml job 1: "),
    ('lora = "tl.safetensors:nan"', "'lora' in j.toml job 1: "),
    ('lora = ":0.5"', "'lora' in j.toml job 1: "),
    ('control = "c.png"', "'control' in j.toml job 1 needs 'control_model'"),
    ('control_model = "cn.safetensors"', "'control_model' in j.toml job 1 needs 'control'"),
    ('ip_adapter = "ip.safetensors"', "'ip_adapter' in j.toml job 1 needs 'ip_image'"),
    ('output = "x.png"\nformat = "jpg"', "'output' in j.toml job 1 names a PNG file"),
])
def test_a_bad_key_is_named_with_its_file_and_job(tmp_path, keys, named):
    line = refused(cli("batch", second_job(tmp_path, keys), "-o", tmp_path / "ot", "--dry-run"))
    assert named in line, line
    assert " --" not in line and " -o " not in line, line  # batch files have keys, not flags


def test_gen_still_names_its_flags(tmp_path):
    result = cli("gen", "a", "--model", "tiny", "--control", "c.png", "--dry-run")
    assert "--control needs --control-model" in refused(result)


# --- 4 and 5. the manifest ------------------------------------------------------------------------

@pytest.mark.parametrize(("out", "manifest"), [("m3/", "m3/"), ("m3", "m3"), ("m3", "m3/sub")])
def test_a_manifest_that_will_be_a_folder_is_refused_before_any_work(tmp_path, monkeypatch,
                                                                     out, manifest):
    """-o m3/ --manifest m3/ made job 0, then failed appending to the folder, saying to free
    some space. A job's own folder (output = "sub/...") is made by the run too."""
    monkeypatch.chdir(tmp_path)
    jobs = write(tmp_path / "s.toml", f'{DEFAULTS}[[job]]\nprompt = "a"\n[[job]]\nprompt = "b"\n'
                                      'output = "sub/b.png"\n')
    for extra in (("--dry-run",), ()):
        line = refused(cli("batch", jobs, "-o", out, "--manifest", manifest, *extra))
        assert f"--manifest {manifest.rstrip('/')} is a folder" in line, line
    assert not (tmp_path / "m3").exists()


def test_a_manifest_over_a_jobs_image_is_refused(tmp_path):
    jobs = write(tmp_path / "s.toml", f'{DEFAULTS}[[job]]\nprompt = "a"\noutput = "a.png"\n')
    out = tmp_path / "ot"
    line = refused(cli("batch", jobs, "-o", out, "--manifest", out / "a.png", "--dry-run"))
    assert "s.toml job 0 writes its image" in line, line


def test_an_unwritable_manifest_names_manifest_not_o(tmp_path):
    blocker = write(tmp_path / "afile", "x")
    jobs = second_job(tmp_path, "")
    line = refused(cli("batch", jobs, "-o", tmp_path / "ot", "--manifest",
                       blocker / "m.jsonl", "--dry-run"))
    assert line.startswith(f"error: --manifest {blocker / 'm.jsonl'}: "), line
    assert "choose another --manifest" in line and "choose another -o" not in line


def _one_job_into(tmp_path: Path, manifest: Path):
    items = [BatchItem(0, Job(prompt="a", seed=1), None)]
    return run_batch(items, lambda item: tmp_path / "a.png", lambda item, path: {}, manifest)


def test_a_manifest_append_error_says_free_space_only_for_a_full_disk(tmp_path, monkeypatch):
    with pytest.raises(OutputError) as e:
        _one_job_into(tmp_path, tmp_path)  # a folder: EISDIR
    assert "free some space" not in str(e.value) and "--manifest" in str(e.value)

    def full(path, record):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("hires.output.append_manifest", full)
    with pytest.raises(OutputError, match="free some space"):
        _one_job_into(tmp_path, tmp_path / "m.jsonl")


# --- 6. a bad template as the job wrote it -----------------------------------------------------

@pytest.mark.parametrize("template", ["{foo}.png", "sub/{foo}.png"])
def test_a_bad_template_is_shown_as_written(tmp_path, template):
    out = tmp_path / "ot"
    line = refused(cli("batch", second_job(tmp_path, f'output = "{template}"'), "-o", out,
                       "--dry-run"))
    assert "j.toml job 1" in line and f"'{template}'" in line, line
    assert str(out) not in line


@pytest.mark.parametrize("name", ["jobs.txt", "jobs"])
def test_jsonl_under_another_suffix_is_read_as_jsonl(tmp_path, name):
    """jobs.txt holding one object a line was parsed as TOML: 'not valid TOML' at line 1."""
    jobs = write(tmp_path / name, '# two jobs\n\n{"prompt": "a", "model": "tiny", "width": 64, '
                                  '"height": 64}\n{"prompt": "b", "model": "tiny", "width": 64, '
                                  '"height": 64}\n')
    result = cli("batch", str(jobs), "-o", str(tmp_path / "out"), "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert "total: 2 to make" in result.stdout


def test_a_txt_batch_file_in_toml_is_still_toml(tmp_path):
    jobs = write(tmp_path / "jobs.txt", f'{DEFAULTS}[[job]]\nprompt = "a"\n')
    result = cli("batch", str(jobs), "-o", str(tmp_path / "out"), "--dry-run")
    assert result.exit_code == 0, result.stderr


def test_a_folder_as_the_batch_file_says_so(tmp_path):
    """`hires batch .` said 'batch file not found: .'."""
    line = refused(cli("batch", str(tmp_path), "--dry-run"))
    assert line.startswith(f"error: {tmp_path} is a folder; give a batch file")


@pytest.mark.parametrize("given", [True, False])
def test_the_job_file_as_its_own_manifest_is_refused(tmp_path, monkeypatch, given):
    """`--manifest jobs.jsonl` (or a job file named manifest.jsonl in -o's folder) made the
    image and appended its record to the job file, whose next run refused it: 'unknown key'."""
    monkeypatch.chdir(tmp_path)
    text = '{"prompt": "a", "model": "tiny", "width": 64, "height": 64, "steps": 1}\n'
    jobs = write(tmp_path / ("jobs.jsonl" if given else "manifest.jsonl"), text)
    for extra in (("--dry-run",), ()):
        args = ("--manifest", str(jobs)) if given else ()
        line = refused(cli("batch", jobs.name, "-o", ".", *args, *extra))
        assert "is the job file" in line if given else "is also the manifest" in line, line
    assert jobs.read_text(encoding="utf-8") == text
    assert sorted(p.name for p in tmp_path.iterdir()) == [jobs.name]


def test_two_jobs_writing_one_file_through_a_symlinked_folder_are_refused(tmp_path):
    """`x.png` and `self/x.png` with self -> . both ran: the second moved the first's image
    aside and took its name, and both said done."""
    out = tmp_path / "ot"
    out.mkdir()
    (out / "self").symlink_to(".")
    jobs = second_job(tmp_path, 'output = "self/x.png"').read_text(encoding="utf-8")
    jobs = write(tmp_path / "j.toml", jobs.replace('prompt = "a"\n', 'prompt = "a"\n'
                                                   'output = "x.png"\n', 1))
    line = refused(cli("batch", jobs, "-o", out, "--dry-run"))
    assert "j.toml jobs 0 and 1 both write" in line, line


@pytest.mark.parametrize(("where", "said"), [
    ("job", "'preset' in j.toml job 1: preset file not found: none.toml"),
    ("defaults", "'preset' in j.toml [defaults]: unknown preset 'nope'")])
def test_a_jobs_preset_error_names_the_file_and_job(tmp_path, where, said):
    """'preset file not found: none.toml' named no file, job or key."""
    jobs = (second_job(tmp_path, 'preset = "none.toml"') if where == "job" else
            write(tmp_path / "j.toml", f'{DEFAULTS}preset = "nope"\n[[job]]\nprompt = "a"\n'))
    line = refused(cli("batch", jobs, "-o", tmp_path / "ot", "--dry-run"))
    assert line.startswith(f"error: {said}"), line


def test_an_unwritable_o_names_o_not_a_manifest_not_given(tmp_path):
    """-o under a file blamed '--manifest OUT/manifest.jsonl', a flag not given."""
    blocker = write(tmp_path / "afile", "x")
    line = refused(cli("batch", second_job(tmp_path, ""), "-o", blocker / "ot", "--dry-run"))
    assert line == f"error: cannot write under {blocker}: it is a file; choose another -o", line


def test_rank_without_world_size_says_it_is_not_set(tmp_path):
    """'RANK=1 WORLD_SIZE=1 in the environment' named a WORLD_SIZE nobody set."""
    line = refused(cli("batch", second_job(tmp_path, ""), "-o", tmp_path / "ot", "--dry-run",
                       env={"RANK": "1"}))
    assert line.startswith("error: RANK=1 in the environment (WORLD_SIZE is not set"), line


def test_a_local_rank_that_is_no_number_is_named(tmp_path):
    """`LOCAL_RANK=x` said "got RANK=None WORLD_SIZE=None", neither of them set."""
    line = refused(cli("batch", second_job(tmp_path, ""), "-o", tmp_path / "ot", "--dry-run",
                       env={"LOCAL_RANK": "x"}))
    assert line == ("error: LOCAL_RANK='x' in the environment: each must be a whole number; "
                    "set them, unset them, or pass --shard I/N"), line


# --- values as the file spells them; a JSONL job's line in every error -------------------------

@pytest.mark.parametrize(("key", "value", "said"), [
    ("steps", "true", "'steps' in j.jsonl job 1 (line 2) must be a whole number, got true"),
    ("seed", "null", None),  # null is a key not given: job 1 runs
    ("seed", '{"a": 1}', "'seed' in j.jsonl job 1 (line 2) must be a whole number (no quotes, "
                         'no decimal point), got {"a": 1}'),
    ("output", "false", "'output' in j.jsonl job 1 (line 2) must be a file name, got false"),
    ("guidance", '"7"', "'guidance' in j.jsonl job 1 (line 2) must be a number (write it "
                        'without quotes), got "7"'),
    ("lora", "[true]", "'lora' in j.jsonl job 1 (line 2) must be text or a list of text, "
                       "got [true]")])
def test_a_jsonl_value_of_the_wrong_kind_is_quoted_as_json_spells_it(tmp_path, key, value, said):
    """`"steps": true` said "got True" and `{"a": 1}` "got {'a': 1}": Python's spelling, which
    the file does not use."""
    base = '"model": "tiny", "steps": 1, "width": 64, "height": 64'
    own = base.replace('"steps": 1, ', "") if key == "steps" else base  # a key given once
    jobs = write(tmp_path / "j.jsonl", f'{{"prompt": "a", {base}}}\n'
                                       f'{{"prompt": "b", {own}, "{key}": {value}}}\n')
    result = cli("batch", jobs, "-o", tmp_path / "ot", "--dry-run")
    if said is None:
        assert result.exit_code == 0, result.stderr
        return
    assert refused(result) == f"error: {said}"


def test_a_toml_date_where_text_belongs_is_quoted_as_written(tmp_path):
    """A TOML date has no JSON spelling: it is shown as the file wrote it, not in quotes."""
    preset = write(tmp_path / "p.toml", "description = 1979-05-27\n")
    line = refused(cli("batch", second_job(tmp_path, f'preset = "{preset}"'), "-o",
                       tmp_path / "ot", "--dry-run"))
    assert line.endswith("must be text (in quotes), got 1979-05-27"), line


def test_a_jsonl_jobs_file_and_output_errors_name_its_line(small, tmp_path):
    """A missing LoRA, or an output over the job's own input, said "j.jsonl job 1" where the
    file's other errors say "j.jsonl job 1 (line 3)"."""
    base = '"model": "tiny", "steps": 1, "width": 64, "height": 64'
    for extra, said in ((', "lora": "none.safetensors"', "'lora' in j.jsonl job 1 (line 3): "),
                        (f', "image": "{small}", "output": "{small.name}"',
                         "j.jsonl job 1 (line 3): ")):
        jobs = write(tmp_path / "j.jsonl", f'{{"prompt": "a", {base}}}\n\n'
                                           f'{{"prompt": "b", {base}{extra}}}\n')
        line = refused(cli("batch", jobs, "-o", small.parent, "--dry-run"))
        assert line.startswith(f"error: {said}"), line


def test_a_value_is_quoted_on_one_line_as_its_file_wrote_it():
    """JSON's spelling left a line separator, a C1 newline and a right-to-left override raw
    (Python's repr had escaped them); a date in a list was datetime.date(...), nan NaN."""
    import datetime

    from hires.job import spelled

    assert spelled("x\u2028y\x85z\u202eg") == '"x\\u2028y\\u0085z\\u202eg"'
    assert spelled("a\nb") == '"a\\nb"' and spelled("café €") == '"café €"'
    assert spelled([datetime.date(1979, 5, 27)]) == "[1979-05-27]"
    assert spelled({"a": [True, None]}) == '{"a": [true, null]}'
    assert [spelled(float(v)) for v in ("nan", "inf", "-inf", "1.5")] == [
        "nan", "inf", "-inf", "1.5"]
    assert spelled("x\U000e0001") == '"x\\U000e0001"'  # past U+FFFF: not \ue0001


def test_a_print_size_that_is_no_paper_is_quoted_on_one_line(tmp_path):
    """"A2\nx" was quoted 'A2 and x' on two lines."""
    jobs = write(tmp_path / "p.jsonl", '{"prompt": "a", "print_size": "A2\\nx"}\n'
                                       '{"prompt": "a", "print_size": "A2+3\\u2028"}\n')
    result = cli("batch", jobs, "-o", tmp_path / "ot", "--dry-run")
    assert result.exit_code == 2
    lines = error_lines(result.stderr)  # each job's on its own line
    assert len(lines) == 2 and result.stderr.count("\n") == 2, result.stderr
    assert lines[0].endswith('tabloid; A2-landscape), got "A2\\nx"'), lines
    assert lines[1].endswith('got "+3\\u2028"'), lines


def test_two_jsonl_jobs_writing_one_file_are_named_with_their_lines(tmp_path):
    """"c.jsonl jobs 0 and 1 both write ..." named no lines, where every other error does."""
    jobs = write(tmp_path / "c.jsonl", '{"prompt": "a", "output": "same.png"}\n\n'
                                       '{"prompt": "b", "output": "same.png"}\n')
    line = refused(cli("batch", jobs, "-o", tmp_path / "ot", "--dry-run"))
    assert line.startswith("error: c.jsonl jobs 0 (line 1) and 1 (line 3) both write "), line


def test_a_print_size_that_is_no_text_is_said_so(tmp_path):
    """`print_size = true` said "print size must look like 60x90cm ..., got 'True'"."""
    line = refused(cli("batch", second_job(tmp_path, "print_size = true"), "-o",
                       tmp_path / "ot", "--dry-run"))
    assert line == ("error: 'print_size' in j.toml job 1 must be text like \"60x90cm\" or "
                    "\"A2\", got true"), line


def test_an_error_quoting_a_value_raw_is_still_one_line(tmp_path):
    """A job's sampler "eu\nler" was quoted raw ('eu', then ler' on a line of its own): every
    line hires writes on stderr has its line breaks escaped."""
    jobs = write(tmp_path / "s.jsonl", '{"prompt": "a", "sampler": "eu\\nler\\u2028x"}\n')
    line = refused(cli("batch", jobs, "-o", tmp_path / "ot", "--dry-run"))
    assert line.endswith("got 'eu\\nler\\u2028x'"), line


def test_a_model_not_here_is_told_to_be_named_where_it_was_named(tmp_path, monkeypatch):
    """A job's own `model` not in the cache was told "pass ... with --model": the batch's flag,
    where the fix is the job's key; a model from --model is still told the flag."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    keyed_jobs = write(tmp_path / "k.jsonl", '{"prompt": "a", "model": "someone/not-cached"}\n')
    job_words = ("give the job's model as a local folder or .safetensors file (or model = "
                 '"tiny" to try hires offline)')
    planned = cli("batch", keyed_jobs, "-o", tmp_path / "ot", "--dry-run")
    assert planned.exit_code == 1 and error_lines(planned.stderr)[0].endswith(job_words)
    made = cli("batch", keyed_jobs, "-o", tmp_path / "ot")
    assert made.exit_code == 1 and job_words in made.stderr and "--model" not in made.stderr
    flagged = write(tmp_path / "f.jsonl", '{"prompt": "a"}\n')
    planned = cli("batch", flagged, "-o", tmp_path / "ot", "--dry-run", "--model", "some/thing")
    assert error_lines(planned.stderr)[0].endswith("with --model (or --model tiny to try hires "
                                                   "offline)"), planned.stderr


@pytest.mark.parametrize("where, named", [
    ("preset", "j.toml job 0: 'control_model' in preset"),
    ("defaults", "j.toml job 0: 'control_model' in j.toml [defaults] needs 'control'"),
    ("job", "'control_model' in j.toml job 0 needs 'control'"),
])
def test_an_addon_without_its_image_is_named_where_its_key_is(where, named, tmp_path):
    """A preset's ControlNet model was said to be in the job, which has no such key."""
    key = 'control_model = "cn.safetensors"\n'
    preset = write(tmp_path / "cn.toml", key)
    jobs = write(tmp_path / "j.toml", (f'{DEFAULTS}{key if where == "defaults" else ""}'
                                       f'[[job]]\nprompt = "a"\n{key if where == "job" else ""}'))
    flags = ("--preset", preset) if where == "preset" else ()
    line = refused(cli("batch", jobs, *flags, "-o", tmp_path / "ot", "--dry-run"))
    assert named in line, line


def test_a_presets_missing_file_is_named_in_the_preset_not_the_job_file(tmp_path,
                                                                         monkeypatch):
    """'lora' in jobs.toml job 0: ..., not the job file's: the preset named it."""
    monkeypatch.chdir(tmp_path)
    preset = write(tmp_path / "p.toml", 'lora = "gone.safetensors"\nmodel = "tiny"\n')
    own = write(tmp_path / "own.toml", f'[[job]]\nprompt = "a"\npreset = "{preset}"\n')
    line = refused(cli("batch", own, "-o", tmp_path / "o", "--dry-run"))
    assert line.startswith(f"error: 'lora' in preset '{preset}' (own.toml job 0): gone."), line
    assert line.endswith("not the preset's")
    plain = write(tmp_path / "plain.toml", '[[job]]\nprompt = "a"\n')
    line = refused(cli("batch", plain, "-o", tmp_path / "o", "--preset", preset, "--dry-run"))
    assert line.startswith(f"error: plain.toml job 0: 'lora' in preset '{preset}': gone."), line
    models = write(tmp_path / "m.toml", 'model = "./gone"\n')
    line = refused(cli("batch", plain, "-o", tmp_path / "o", "--preset", models, "--dry-run"))
    assert f"plain.toml job 0: 'model' in preset '{models}': ./gone: no such file" in line
    # the job's own key is the job's
    mine = write(tmp_path / "mine.toml", f'[[job]]\nprompt = "a"\npreset = "{preset}"\n'
                                         'lora = "mine.safetensors"\n')
    line = refused(cli("batch", mine, "-o", tmp_path / "o", "--dry-run"))
    assert "'lora' in mine.toml job 0: mine.safetensors" in line and "job file's" in line


def test_a_manifest_or_output_over_a_jobs_input_is_refused(small, tmp_path):
    """--manifest in.png appended JSON to a job's input; job 0's output over job 1's input
    replaced it before job 1 read it."""
    jobs = write(tmp_path / "j.toml", f'{DEFAULTS}[[job]]\nimage = "{small}"\nscale = 2\n')
    before = small.read_bytes()
    line = refused(cli("batch", jobs, "-o", tmp_path / "o", "--manifest", small))
    assert f"--manifest: {small} is an input image" in line, line
    photo = tmp_path / "photo.png"
    photo.write_bytes(before)
    line = refused(cli("batch", jobs, "-o", tmp_path / "o", "--manifest", photo, "--dry-run"))
    assert f"--manifest {photo} is not a JSON lines file" in line, line
    notes = write(tmp_path / "notes.toml", "a = 1\n")  # text, but no JSON lines: refused too
    line = refused(cli("batch", jobs, "-o", tmp_path / "o", "--manifest", notes, "--dry-run"))
    assert f"--manifest {notes} is not a JSON lines file (its first line is no JSON" in line
    assert notes.read_text() == "a = 1\n"
    blank = write(tmp_path / "blank.toml", "\n\na = 1\n")  # a blank first line hid it
    line = refused(cli("batch", jobs, "-o", tmp_path / "o", "--manifest", blank, "--dry-run"))
    assert "is not a JSON lines file" in line
    lines = write(tmp_path / "m.jsonl", '\n{"index": 0}\n')
    assert cli("batch", jobs, "-o", tmp_path / "o", "--manifest", lines,
               "--dry-run").exit_code == 0
    second = tmp_path / "second.png"
    second.write_bytes(before)
    chained = write(tmp_path / "c.toml", f'{DEFAULTS}[[job]]\nimage = "{small}"\nscale = 2\n'
                                         f'output = "{second}"\n[[job]]\nimage = "{second}"\n'
                                         'scale = 2\n')
    for extra in (("--dry-run",), ("--overwrite",)):
        line = refused(cli("batch", chained, "-o", tmp_path / "o", *extra))
        assert f"c.toml job 0: {second} is an input image" in line, line
    assert small.read_bytes() == second.read_bytes() == photo.read_bytes() == before


def test_a_rerun_batch_whose_later_job_upscales_a_made_image_runs(tmp_path, asked):
    """Job 1 upscales job 0's image: the re-run was refused ('is an input image'), though
    job 0, made already, is skipped and writes nothing."""
    first = write(tmp_path / "first.toml", f'{DEFAULTS}[[job]]\nprompt = "a"\nseed = 1\n'
                                           'output = "base.png"\n')
    assert cli("batch", first, "-o", tmp_path / "o", "-q").exit_code == 0
    base = tmp_path / "o" / "base.png"
    made = base.read_bytes()
    chained = write(tmp_path / "chain.toml", f'{DEFAULTS}[[job]]\nprompt = "a"\nseed = 1\n'
                                             f'output = "base.png"\n[[job]]\nimage = "{base}"\n'
                                             'scale = 2\nseed = 2\noutput = "up.png"\n')
    result = cli("batch", chained, "-o", tmp_path / "o", "--json")
    assert result.exit_code == 0, result.stderr
    assert [r["status"] for r in json_lines(result.stdout)] == ["skipped", "done"]
    assert base.read_bytes() == made and (tmp_path / "o" / "up.png").is_file()
    # --overwrite would make job 0 again, over job 1's input: refused, in its shard too
    for shard in ((), ("--shard", "0/2")):
        line = refused(cli("batch", chained, "-o", tmp_path / "o", "--overwrite", "--dry-run",
                           *shard))
        assert f"chain.toml job 0: {base} is an input image" in line


def test_a_batch_dry_run_says_what_the_run_warns_of(tmp_path):
    from PIL import Image

    clear = tmp_path / "clear.png"
    Image.new("RGBA", (96, 64), (9, 9, 9, 0)).save(clear)
    jobs = write(tmp_path / "w.toml", f'{DEFAULTS}[[job]]\nprompt = "a"\nformat = "webp"\n'
                                      f'dpi = 300\n[[job]]\nimage = "{clear}"\nscale = 2\n'
                                      'format = "jpg"\n[[job]]\nprompt = "b"\n')
    gone = tmp_path / "gone"
    result = cli("batch", jobs, "-o", tmp_path / "o", "--dry-run", "--json",
                 env={"TMPDIR": str(gone)})
    assert result.exit_code == 0, result.stderr
    rows = json_lines(result.stdout)
    assert [len(r["warnings"]) for r in rows] == [1, 1, 0]
    assert "warnings" in json_lines(cli("batch", jobs, "-o", tmp_path / "o", "--dry-run",
                                        "--json").stdout)[0]
    assert "keeps no dpi" in rows[0]["warnings"][0]
    assert "is flattened on white" in rows[1]["warnings"][0]
    assert f"warning: job 0: {rows[0]['warnings'][0]}" in result.stderr
    assert f"TMPDIR={gone} is not a folder" in result.stderr


@pytest.mark.parametrize("in_preset", [False, True])
def test_a_jobs_missing_image_is_named_as_its_key(in_preset, tmp_path, monkeypatch):
    """It was 'j.toml job 0: gone.png: no such file': not the key, nor the preset that gave it,
    nor where a relative path is read from (as gen says a preset's add-on images)."""
    monkeypatch.chdir(tmp_path)
    preset = write(tmp_path / "p.toml", 'image = "gone.png"\nscale = 2\n')
    job = f'preset = "{preset}"' if in_preset else 'image = "gone.png"\nscale = 2'
    jobs = write(tmp_path / "j.toml", f'[[job]]\nprompt = "x"\nmodel = "tiny"\n{job}\n')
    result = cli("batch", jobs, "--dry-run")
    (line,) = error_lines(result.stderr)
    where = f"preset '{preset}' (j.toml job 0)" if in_preset else "j.toml job 0"
    home = "the preset's" if in_preset else "the job file's"
    assert line == (f"error: 'image' in {where}: gone.png: no such file; relative paths are "
                    f"read from the current folder ({tmp_path}), not {home}"), line


# --- a batch's -o is a folder -------------------------------------------------------------------

@pytest.mark.parametrize(("given", "what"), [("tb/{prompt}_{seed}.png", "a template"),
                                             ("tb/out.png", "a .png file's name"),
                                             ("out.GIF", "a .gif file's name")])
def test_an_output_that_reads_as_an_image_is_refused(tmp_path, given, what):
    """-o 'tb/{prompt}_{seed}.png' made a folder of that name for each job, its image inside."""
    jobs = write(tmp_path / "j.toml", f'{DEFAULTS}[[job]]\nprompt = "a"\n')
    for extra in ((), ("--dry-run",)):
        line = refused(cli("batch", jobs, "-o", tmp_path / given, *extra))
        assert line.startswith(f"error: batch -o {tmp_path / given} reads as {what}, but it "
                               "names the folder for the images; give a folder, and name each "
                               "image with `output` in the job file"), line
    assert list(tmp_path.iterdir()) == [jobs]
    # A folder that is there is taken as it is named, and one a '/' says is one; braces in
    # folders that are there are their names.
    (tmp_path / "renders.png").mkdir()
    (tmp_path / "x{seed}").mkdir()
    for folder in (tmp_path / "renders.png", f"{tmp_path}/renders.v2.png/",
                   tmp_path / "x{seed}" / "sub"):
        made = cli("batch", jobs, "-o", folder, "--dry-run")
        assert made.exit_code == 0, made.stderr


def test_braces_in_an_output_folder_are_its_names(tmp_path):
    """-o 'a{b': the folder, joined to each job's name, was read as a broken template of the
    job's ("bad output template 'a.png'")."""
    jobs = write(tmp_path / "j.toml", f'{DEFAULTS}[[job]]\nprompt = "a"\noutput = "a.png"\n'
                                      '[[job]]\nprompt = "b"\n')
    made = cli("batch", jobs, "-o", tmp_path / "a{b", "-q")
    assert made.exit_code == 0, made.stderr
    names = sorted(p.name for p in (tmp_path / "a{b").glob("*.png"))
    assert len(names) == 2 and names[0] == "a.png" and names[1].startswith("job0001_64x64_s")
    # A '}' alone: the name is filled in only where a job's template brings a '{' (it went to
    # a folder 'a}}b' beside the manifest's).
    jobs = write(tmp_path / "k.toml", f'{DEFAULTS}[[job]]\nprompt = "a"\n'
                                      '[[job]]\nprompt = "b"\noutput = "{index}.png"\n')
    made = cli("batch", jobs, "-o", tmp_path / "a}b", "-q")
    assert made.exit_code == 0, made.stderr
    assert not (tmp_path / "a}}b").exists()
    names = sorted(p.name for p in (tmp_path / "a}b").iterdir())
    assert names[0] == "1.png" and names[1].startswith("job0000_64x64_s"), names
    assert names[2:] == ["manifest.jsonl"]


def test_every_bad_job_is_said_at_once(tmp_path):
    """A file of many jobs with several bad ones was refused one job at a time: fix it, run
    again, and only then hear of the next."""
    jobs = write(tmp_path / "j.toml", DEFAULTS + '[[job]]\nprompt = "good"\n'
                 '[[job]]\nprompt = "b"\nsteps = 0\n[[job]]\nprompt = "c"\nstepz = 3\n'
                 '[[job]]\nprompt = "d"\nimage = "gone.png"\nscale = 2\n')
    for extra in ((), ("--dry-run",), ("--dry-run", "--json")):
        result = cli("batch", jobs, "-o", tmp_path / "ot", *extra)
        assert result.exit_code == 2 and result.stdout == ""
        lines = error_lines(result.stderr)
        assert [line.split(" job ")[1][:1] for line in lines] == ["1", "2", "3"], lines
        assert "'steps' in j.toml job 1" in lines[0] and "'stepz' in j.toml job 2" in lines[1]
    assert not (tmp_path / "ot").exists()  # nothing made: not even the good job's
    # Names that collide are said so too, each pair, once the jobs read.
    jobs = write(tmp_path / "n.toml", DEFAULTS + ''.join(
        f'[[job]]\nprompt = "{p}"\noutput = "{o}.png"\n' for p, o in
        [("a", "x"), ("b", "x"), ("c", "y"), ("d", "y")]))
    lines = error_lines(cli("batch", jobs, "-o", tmp_path / "ot", "--dry-run").stderr)
    assert [line.split(" write ")[0] for line in lines] == [
        "error: n.toml jobs 0 and 1 both", "error: n.toml jobs 2 and 3 both"], lines


def test_bad_settings_and_bad_outputs_are_said_in_one_go(tmp_path):
    """The jobs' outputs were checked only once every job's settings read: a file with both
    kinds of error took two runs to hear of them all (README: "fixed in one go")."""
    jobs = write(tmp_path / "j.jsonl", "\n".join([
        '{"prompt": "a", "steps": "30"}', '{"prompt": "b", "output": "x.png"}',
        '{"prompt": "c", "output": "x.png"}', '{"prompt": "d", "output": "a\\nb.png"}',
        '{"prompt": "e", "output": "y.jpg", "format": "png"}', '{"prompt": "f", "hue": 1}',
        '{"prompt": "g", "output": "z.png"}']) + "\n")
    for extra in ((), ("--dry-run",)):
        result = cli("batch", jobs, "-o", tmp_path / "ot", *extra)
        assert result.exit_code == 2 and result.stdout == ""
        lines = error_lines(result.stderr)
        assert len(lines) == 5, lines
        assert "'steps' in j.jsonl job 0" in lines[0] and "'hue' in j.jsonl job 5" in lines[1]
        assert "jobs 1 (line 2) and 2 (line 3) both write" in lines[2]
        assert "job 3 (line 4)" in lines[3] and "line break" in lines[3]
        assert "job 4 (line 5) names a JPG file" in lines[4]
    assert not (tmp_path / "ot").exists()


def test_a_thousand_bad_jobs_say_how_many_then_twenty(tmp_path):
    jobs = write(tmp_path / "j.jsonl", '{"prompt": "a", "steps": 0}\n' * 1000)
    said = cli("batch", jobs, "-o", tmp_path / "ot", "--dry-run").stderr.splitlines()
    assert said[0] == ("1000 errors in the jobs; the first 20 follow (fix them, and the next "
                       "run says the rest)")
    assert len(said) == 21 and all(line.startswith("error: 'steps' in j.jsonl job ")
                                   for line in said[1:])
    assert said[-1].startswith("error: 'steps' in j.jsonl job 19 (line 20) ")
    # As JSON, the count is a log object, and every error object is a job's.
    said = cli("batch", jobs, "-o", tmp_path / "ot", "--dry-run", "--progress", "json").stderr
    objects = [json.loads(line) for line in said.splitlines()]
    assert list(objects[0]) == ["log"] and len(objects) == 21
    assert all(list(o) == ["error"] and " job " in o["error"] for o in objects[1:])


def test_settings_to_fix_come_before_an_add_on_not_cached(tmp_path):
    """A later job's LoRA not in the cache (exit 1) hid the settings errors of those before
    it, each of them exit 2."""
    jobs = write(tmp_path / "me.jsonl", '{"prompt": "a", "output": "a.png", "quality": 80}\n'
                 '{"prompt": "b", "lora": "someone/not-cached-lora"}\n')
    result = cli("batch", jobs, "-o", tmp_path / "ot", "--dry-run", env={"HF_HUB_OFFLINE": "1"})
    assert result.exit_code == 2
    assert error_lines(result.stderr) == [
        "error: 'quality' in me.jsonl job 0 (line 1) is for jpg and webp, and a.png is png "
        "(lossless); leave it out or write a .jpg or .webp"]


@pytest.mark.parametrize(("lines", "where"), [
    ('[[job]]\nprompt = "a"\naspect = "16:9"\n', "j.toml job 0"),
    ('[defaults]\naspect = "16:9"\n[[job]]\nprompt = "a"\n', "j.toml [defaults]")])
def test_an_aspect_alone_in_a_job_file_says_to_set_its_size_there(tmp_path, lines, where):
    """It said "give --size", which batch does not take."""
    jobs = write(tmp_path / "j.toml", lines)
    line = refused(cli("batch", jobs, "-o", tmp_path / "ot", "--dry-run"))
    assert line == (f"error: 'aspect' in {where} needs a long side: set 'size' (in pixels) "
                    "with it, in the job or in [defaults]")


def test_every_job_whose_output_or_model_is_in_the_way_is_said_at_once(tmp_path):
    """The checks after the file's (outputs in the way, model files not there) stopped at the
    first job too."""
    jobs = write(tmp_path / "j.toml", DEFAULTS + '[[job]]\nprompt = "a"\noutput = "a.png"\n'
                 '[[job]]\nprompt = "b"\noutput = "b.png"\n[[job]]\nprompt = "c"\n')
    (tmp_path / "ot").mkdir()
    for name in ("a.png", "b.png"):  # anyone's files: no record
        (tmp_path / "ot" / name).write_bytes(b"not hires'")
    lines = error_lines(cli("batch", jobs, "-o", tmp_path / "ot", "--dry-run").stderr)
    assert [line.split(":")[1].strip() for line in lines] == ["j.toml job 0", "j.toml job 1"]
    assert all("exists but holds no hires settings record" in line for line in lines)
    # A model file not there: each job that names its own, once for those [defaults] gives.
    jobs = write(tmp_path / "m.toml", '[defaults]\nmodel = "gone.safetensors"\nsteps = 1\n'
                 '[[job]]\nprompt = "a"\n[[job]]\nprompt = "b"\n'
                 '[[job]]\nprompt = "c"\nmodel = "other.safetensors"\n')
    lines = error_lines(cli("batch", jobs, "-o", tmp_path / "new", "--dry-run").stderr)
    assert len(lines) == 2, lines
    assert "gone.safetensors" in lines[0] and "other.safetensors" in lines[1]


def test_a_manifest_line_cut_short_is_said_and_the_next_starts_a_line_of_its_own(tmp_path,
                                                                               monkeypatch):
    """A short write (a disk filling up) left a line cut short, said written, and the next
    run's line was glued onto it: two records lost (found by QA)."""
    import os

    from hires.output import append_manifest

    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"index": 0, "status": "done"}\n{"index": 1, "stat')  # cut short
    append_manifest(manifest, {"index": 2, "status": "done"})
    lines = manifest.read_text().split("\n")
    assert json.loads(lines[0])["index"] == 0 and json.loads(lines[2]) == {"index": 2,
                                                                          "status": "done"}
    assert lines[1] == '{"index": 1, "stat' and lines[3] == ""
    append_manifest(manifest, {"index": 3, "status": "done"})  # after a whole line: no gap
    assert json.loads(manifest.read_text().split("\n")[3])["index"] == 3
    real = os.write
    calls = []

    def filling(fd, data):  # the disk takes half the line, then is full
        calls.append(len(data))
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, bytes(data[: len(data) // 2]))

    monkeypatch.setattr(os, "write", filling)
    with pytest.raises(OSError) as full:
        append_manifest(manifest, {"index": 4, "status": "done"})
    assert full.value.errno == errno.ENOSPC and len(calls) == 2


def test_a_txt_job_file_is_jsonl_past_any_length_of_comments(tmp_path):
    """Read as TOML when its first '{' came after 64 KiB of comments (found by QA)."""
    jobs = tmp_path / "jobs.txt"
    line = json.dumps({"prompt": "x", "size": 256, "steps": 1, "model": "tiny"})
    jobs.write_text("#" + "x" * 70000 + "\n\n" + line + "\n")
    result = cli("batch", jobs, "-o", tmp_path / "out", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert "job 0: 256x256" in result.stdout


def test_an_explicit_shard_is_not_refused_for_the_environments_world_size(tmp_path):
    """WORLD_SIZE=abc refused `--shard 0/2`, which the environment does not shard (found by
    QA); without --shard it is still said."""
    jobs = write(tmp_path / "jobs.jsonl",
                 "".join(json.dumps({"prompt": p, "size": 256, "steps": 1, "model": "tiny"})
                         + "\n" for p in "ab"))
    env = {"WORLD_SIZE": "abc", "LOCAL_RANK": "0"}
    given = cli("batch", jobs, "-o", tmp_path / "out", "--dry-run", "--shard", "1/2", env=env)
    assert given.exit_code == 0, given.stderr
    assert "shard 1/2 runs 1" in given.stderr
    assert cli("batch", jobs, "-o", tmp_path / "out", "--dry-run", env=env).exit_code == 2
