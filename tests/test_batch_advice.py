"""Batch jobs against presets and the command's flags: a preset's format yields to a job's
output suffix (as gen's --preset to -o), and errors give advice a job file can take."""

import json

import pytest
from helpers_cli import cli, error_lines, write

from hires.batch import name_outputs, read_batch
from hires.job import JobError


def named(tmp_path, keys: str):
    """The job of a one-job j.toml with `keys` (TOML lines), its output named under -o."""
    jobs = write(tmp_path / "j.toml", f'[[job]]\nprompt = "a"\n{keys}\n')
    items, paths = name_outputs(read_batch(jobs), tmp_path / "out", "j.toml")
    return items[0].job, paths[0]


def test_a_presets_format_yields_to_the_output_suffix(tmp_path):
    """As `hires gen p --preset print-a2 -o x.png`: a PNG, not "make them agree"."""
    job, path = named(tmp_path, 'preset = "print-a2"\noutput = "x.png"')
    assert (path.name, job.format, job.depth) == ("x.png", "png", 16)


def test_a_jobs_own_format_against_its_suffix_is_still_refused(tmp_path):
    with pytest.raises(JobError, match="'format' is tiff; make them agree"):
        named(tmp_path, 'preset = "print-a2"\noutput = "x.png"\nformat = "tiff"')


def refusal(tmp_path, keys: str) -> str:
    """The error of a one-job j.toml with `keys`, read and named as `hires batch` does."""
    with pytest.raises(JobError) as e:
        named(tmp_path, keys)
    return str(e.value)


@pytest.mark.parametrize(("keys", "says"), [
    ("save_stages = true", "`hires batch` keeps no stage images; use `hires gen --save-stages` "
                           "for that job"),
    ("preview = true", "pass --preview to hires batch"),
    ("n = 2", "give a job for each image"),
    ('format = "jpg"\ndepth = 16', "j.toml job 0: JPEG holds 8 bits a channel; a 16-bit image "
                                   "is a .png or .tif file, or set depth = 8 in the job for an "
                                   "8-bit JPEG"),
    ('format = "tiff"\ndepth = 16\nsize = 32768', "use .png, or set depth = 8 in the job"),
    ("size = 64\naspect = \"30:1\"", "j.toml job 0: aspect = 30:1 at size = 64 makes the short "
                                     "side 8 px, under 64: give size = 1800 or more"),
])
def test_batch_advice_is_what_a_job_file_can_do(tmp_path, keys, says):
    """It said "pass it on the command line" (batch has no --save-stages), "pass --depth 8"
    and "give --size 1800" (batch has neither flag)."""
    said = refusal(tmp_path, keys)
    assert says in said
    assert "command line" not in said and "--depth" not in said and "--size" not in said


def test_an_upscale_jobs_size_advice_names_keys(tmp_path, small):
    said = refusal(tmp_path, f'image = "{small}"\nscale = 0.5')
    assert said.endswith("ask for scale = 1 or more"), said


def test_two_sizes_list_the_choices_that_no_size_lists(small):
    """`hires up x.png --scale 2 --size 1024` left out --print-size, which the no-size error
    names."""
    from helpers_cli import cli, error_lines

    clash = error_lines(cli("up", small, "--scale", "2", "--size", "1024", "--dry-run").stderr)
    none = error_lines(cli("up", small, "--dry-run").stderr)
    choices = "give one of --size, --scale, --width/--height or --print-size"
    assert clash[0] == f"error: --scale and --size do not go together: {choices}"
    assert none[0].startswith(f"error: {choices} ")


def test_two_sizes_in_a_job_list_the_same_choices(tmp_path, small):
    said = refusal(tmp_path, f'image = "{small}"\nscale = 2\nsize = 1024')
    assert said == ("j.toml job 0: 'scale' and 'size' do not go together: give one of 'size', "
                    "'scale', 'width'/'height' or 'print_size'")


@pytest.mark.parametrize("overwrite", [(), ("--overwrite",)])
def test_a_folder_where_a_jobs_image_goes_is_said_first(tmp_path, overwrite):
    """It said "exists but holds no hires settings record ...; pass --overwrite", and with
    --overwrite: "is a folder": advice that could not help."""
    from helpers_cli import assert_usage_error, cli

    jobs = write(tmp_path / "b.toml", '[defaults]\nmodel = "tiny"\nsize = 128\nsteps = 1\n'
                 '[[job]]\nprompt = "a"\nseed = 3\n')
    (tmp_path / "out" / "job0000_128x128_s3.png").mkdir(parents=True)
    assert_usage_error(cli("batch", jobs, "-o", tmp_path / "out", "-q", *overwrite),
                       "is a folder, and hires never writes over a folder: move it away")


def test_a_jobs_own_quality_on_a_lossless_image_is_refused(tmp_path):
    """`quality = 90` in a job writing a PNG was dropped without a word (gen refuses
    --quality on a PNG); one from [defaults] still serves only the jpg and webp jobs."""
    own = write(tmp_path / "own.toml", '[[job]]\nprompt = "a"\nquality = 90\noutput = "q.png"\n')
    with pytest.raises(JobError, match=r"'quality' in own.toml job 0 is for jpg and webp, "
                                       r"and q.png is png \(lossless\)"):
        name_outputs(read_batch(own), tmp_path / "out", "own.toml")
    shared = write(tmp_path / "shared.toml", '[defaults]\nquality = 90\n[[job]]\nprompt = "a"\n'
                   'output = "q.png"\n[[job]]\nprompt = "b"\noutput = "q.jpg"\n')
    items, _ = name_outputs(read_batch(shared), tmp_path / "out", "shared.toml")
    assert [i.job.quality for i in items] == [None, 90]


def test_a_job_that_cannot_fit_is_told_its_keys_not_gen_s_flags(tmp_path):
    """"try a larger --vram": batch has no --vram; the job's vram is what to raise."""
    jobs = tmp_path / "j.jsonl"
    jobs.write_text('{"prompt": "a", "size": 2048, "model": "tiny", "vram": 0.9}\n'
                    '{"prompt": "b", "size": 2048, "model": "tiny", "ram": 0.9, "steps": 1}\n')
    planned = cli("batch", jobs, "--device", "cpu", "--dry-run", "-o", tmp_path / "out")
    lines = [line for line in planned.stderr.splitlines() if "cannot run:" in line]
    assert [line.rsplit("; ", 1)[1] for line in lines] == [
        "try a larger vram in the job", "try a larger ram in the job"], planned.stdout
    assert "--vram" not in planned.stdout + planned.stderr
    made = cli("batch", jobs, "--device", "cpu", "-o", tmp_path / "out")  # and as it runs
    assert made.exit_code == 1 and "--ram" not in made.stderr  # failed jobs: exit 1
    assert "try a larger ram in the job" in made.stderr


def test_a_preset_that_is_no_text_is_said_so(tmp_path):
    """`"preset": 5` was "unknown preset '5'", as if a preset of that name were missing."""
    jobs = tmp_path / "j.jsonl"
    jobs.write_text('{"prompt": "a", "preset": 5}\n')
    with pytest.raises(JobError, match=r"'preset' in j.jsonl job 0 \(line 1\) must be text"):
        read_batch(jobs)
    jobs.write_text('{"prompt": "a", "preset": true}\n')  # in JSON's spelling, not Python's
    with pytest.raises(JobError, match=r"\.toml file\), got true$"):
        read_batch(jobs)


def test_a_batch_dry_run_gives_the_plan_hints_in_job_keys_once_for_the_jobs_they_fit(tmp_path):
    """`batch --dry-run` said none of gen's plan hints: a job 8 px past a stage ran a whole
    stage more, unsaid. Each hint is said once with the jobs it is about, in the job file's
    keys (size = 16384, not --size), and a job's JSON row lists its own."""
    jobs = tmp_path / "j.jsonl"
    jobs.write_text('{"prompt": "a", "size": 16392}\n{"prompt": "b", "size": 16392}\n'
                    '{"prompt": "c", "size": 16384}\n')
    out = ("-o", tmp_path / "out")
    planned = cli("batch", jobs, "--gpu", "h100", "--dry-run", *out)
    assert planned.exit_code == 0, planned.stderr
    (said,) = [line for line in planned.stderr.splitlines() if "stage of its own" in line]
    assert said.startswith("jobs 0, 1: 16392x16392 is 0.049 % larger a side than stage 4's")
    assert "(size = 16384) takes ~4 min instead of ~8 min" in said
    rows = [json.loads(line) for line in cli("batch", jobs, "--gpu", "h100", "--dry-run",
                                             "--json", *out).stdout.splitlines()]
    assert [len(row["hints"]) for row in rows] == [1, 1, 0]
    assert said.endswith(rows[0]["hints"][0])


def test_a_batch_s_slow_vae_hint_is_said_once_for_its_jobs_in_keys(tmp_path):
    """A card without bf16 runs the VAE in fp32: said once for the batch's jobs with the job
    key that changes it, not a --vae flag nor each job's seconds."""
    jobs = tmp_path / "j.jsonl"
    jobs.write_text('{"prompt": "a", "size": 2048}\n{"prompt": "b", "size": 4096}\n')
    planned = cli("batch", jobs, "--gpu", "t4", "--dry-run", "-o", tmp_path / "out")
    (said,) = [line for line in planned.stderr.splitlines() if "no native bf16" in line]
    assert said.startswith("jobs 0, 1: the t4 has no native bf16, so the VAE runs in fp32; ")
    assert said.endswith('(vae = "madebyollin/sdxl-vae-fp16-fix" in the job)')


def test_a_job_that_cannot_run_is_an_error_line_on_stderr_named_by_its_key(tmp_path):
    """A dry run exited 2 with its reason on stdout alone (a script logging stderr saw none),
    and a job's device = "cpu" was named as --device, a flag never typed (QA 194)."""
    jobs = tmp_path / "j.toml"
    jobs.write_text('[[job]]\nprompt = "a"\nmodel = "tiny"\nsize = 64\ndevice = "cpu"\n'
                    '[[job]]\nprompt = "b"\nmodel = "tiny"\nsize = 64\n')
    args = ("batch", jobs, "--gpu", "h100", "--dry-run", "-o", tmp_path / "out")
    planned = cli(*args)
    assert planned.exit_code == 2
    assert error_lines(planned.stderr) == [
        "error: job 0 cannot run: --gpu h100 plans that CUDA card, and the job's device cpu a "
        "run on this CPU: give one (a TFLOP/s figure, --gpu 0.5, times a run here)"]
    assert "job 0" not in planned.stdout and "job 1: 64x64" in planned.stdout
    as_json = cli(*args, "--json")  # its row too, and the same line on stderr
    assert as_json.exit_code == 2 and error_lines(as_json.stderr) == error_lines(planned.stderr)
    assert [row["status"] for row in map(json.loads, as_json.stdout.splitlines())] == [
        "cannot run", "to make"]
    flagged = cli("batch", jobs, "--device", "cpu", "--gpu", "h100", "--dry-run", "-o",
                  tmp_path / "out")  # the flag's words where the flag gave it
    assert "and --device cpu a run" in flagged.stderr


def test_a_batch_run_s_cpu_notes_name_each_key_where_it_was_given(tmp_path):
    """A job's dtype = "fp16" on the CPU was told "drop --dtype there", a flag batch has not;
    then "job 0: ... leave dtype out of the job" for one from [defaults] or a preset, which the
    job does not hold (QA 194, 195)."""
    preset = write(tmp_path / "cpu.toml", 'offload = "model"\n')
    jobs = write(tmp_path / "j.toml", '[defaults]\ndtype = "fp16"\n[[job]]\nprompt = "a"\n'
                 f'model = "tiny"\nsize = 64\nsteps = 1\npreset = "{preset}"\n')
    made = cli("batch", jobs, "-o", tmp_path / "out", "--device", "cpu")
    assert made.exit_code == 0, made.stderr
    said = [line for line in made.stderr.splitlines() if line.startswith("warning: ")]
    assert 'warning: dtype = "fp16" in j.toml [defaults] is about 4x slower than fp32 on the ' \
           "CPU; leave it out for a CPU run" in said
    assert f"warning: offload = \"model\" in preset '{preset}' (j.toml job 0) does nothing on " \
           "the CPU (the weights are in RAM already)" in said
    assert "--dtype" not in made.stderr and "--offload" not in made.stderr
    own = write(tmp_path / "own.toml", '[[job]]\nprompt = "a"\nmodel = "tiny"\nsize = 64\n'
                'steps = 1\ndtype = "fp16"\n')
    made = cli("batch", own, "-o", tmp_path / "out2", "--device", "cpu")
    assert 'warning: dtype = "fp16" in own.toml job 0 is about 4x slower' in made.stderr
