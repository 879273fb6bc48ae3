"""Batches: job files, sharding, resumable runs with a manifest, through the library and the CLI."""

import json
import signal
from itertools import combinations
from pathlib import Path

import pytest
import torch
from helpers_cli import (
    IS_ROOT,
    cli,
    error_lines,
    json_lines,
    one_torch_thread,
    part_files,
    sha256,
    spawn_hires,
    use_cached_tiny,
    wait_for,
    write,
)
from safetensors.torch import save_file

from hires.batch import BatchItem, my_share, parse_shard, read_batch, run_batch, stable_seed
from hires.job import Job, JobError

TINY = 'model = "tiny"\nwidth = 256\nheight = 256\nsteps = 1\n'


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_torch_thread()


@pytest.fixture
def tiny_cli(monkeypatch, tiny):
    return use_cached_tiny(monkeypatch, tiny)


def manifest(path: Path) -> list[dict]:
    return json_lines(path.read_text(encoding="utf-8"))


def jsonl_jobs(path: Path, n: int, **values) -> Path:
    lines = [json.dumps({"prompt": f"job {i}", "model": "tiny", "width": 256, "height": 256,
                         "steps": 1, **values}) for i in range(n)]
    return write(path, "# seven tiny jobs\n\n" + "\n".join(lines) + "\n")


# --- reading job files --------------------------------------------------------------------------

def test_toml_defaults_apply_to_every_job_and_jobs_override_them(tmp_path):
    path = write(tmp_path / "jobs.toml", f"""
[defaults]
{TINY}
guidance = 4.0

[[job]]
prompt = "a fox"
seed = 5
output = "fox.png"

[[job]]
prompt = "a whale"
guidance = 9.0
preset = "draft"
""")
    first, second = read_batch(path)
    assert (first.index, first.output, first.job.prompt, first.job.seed) == (0, "fox.png",
                                                                              "a fox", 5)
    assert (first.job.model, first.job.width, first.job.steps, first.job.guidance) == (
        "tiny", 256, 1, 4.0)
    assert second.output is None and second.job.guidance == 9.0
    assert second.job.width == 256  # the file's values win over the job's preset


def test_jsonl_skips_blank_and_comment_lines(tmp_path):
    items = read_batch(jsonl_jobs(tmp_path / "jobs.jsonl", 3))
    assert [i.job.prompt for i in items] == ["job 0", "job 1", "job 2"]
    assert [i.index for i in items] == [0, 1, 2]


def test_null_in_jsonl_is_a_key_not_given(tmp_path):
    """pandas and jq write null for a missing value: it was refused for keys with a default
    ('guidance' ... must be a number, got None). Now the levels below give the value."""
    path = tmp_path / "jobs.jsonl"
    path.write_text(json.dumps({"prompt": "a", "guidance": None, "negative": None,
                                "seed": None, "steps": None, "size": None, "lora": None}))
    draft = ({"steps": 3, "size": 256, "negative": "blurry"}, "preset 'mine'", True)
    (item,) = read_batch(path, levels=[draft])
    assert (item.job.guidance, item.job.steps, item.job.negative) == (Job.guidance, 3, "blurry")
    assert (item.job.width, item.job.lora, item.file_keys) == (256, [], {"prompt"})
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"prompt": "a"}))
    assert item.job.seed == read_batch(plain, levels=[draft])[0].job.seed
    path.write_text(json.dumps({"prompt": "a", "promt": None}))  # a misspelt key still says so
    with pytest.raises(JobError, match="unknown key 'promt'"):
        read_batch(path)


def test_a_byte_order_mark_from_a_windows_editor_is_skipped(tmp_path):
    jsonl = jsonl_jobs(tmp_path / "jobs.jsonl", 2)
    jsonl.write_bytes(b"\xef\xbb\xbf" + jsonl.read_bytes())
    assert [i.job.prompt for i in read_batch(jsonl)] == ["job 0", "job 1"]
    toml = write(tmp_path / "jobs.toml", f'[defaults]\n{TINY}\n[[job]]\nprompt = "a fox"\n')
    toml.write_bytes(b"\xef\xbb\xbf" + toml.read_bytes())
    assert [i.job.prompt for i in read_batch(toml)] == ["a fox"]


def test_seeds_are_stable_so_a_restarted_batch_finds_its_outputs(tmp_path):
    path = jsonl_jobs(tmp_path / "jobs.jsonl", 3)
    seeds = [i.job.seed for i in read_batch(path)]
    assert seeds == [i.job.seed for i in read_batch(path)]
    assert len(set(seeds)) == 3 and all(isinstance(s, int) for s in seeds)
    assert stable_seed("a") != stable_seed("a", 1) != stable_seed("b")


def test_a_jobs_seed_outlives_edits_to_its_settings_and_to_other_jobs(tmp_path):
    """A job's seed came from its place in the file and its keys as written: dropping a
    finished job above it, restating a default (guidance = 7.5) or changing its steps gave it
    another seed, and so another picture. It comes from what it depicts now; the same prompt
    again gets the next seed of its own."""
    def seeds(text: str) -> list[int]:
        return [i.job.seed for i in read_batch(write(tmp_path / "jobs.toml", text))]

    first = seeds('[[job]]\nprompt = "a"\n[[job]]\nprompt = "b"\n[[job]]\nprompt = "b"\n')
    assert len(set(first)) == 3  # the two "b" jobs differ
    assert seeds('[[job]]\nprompt = "b"\n[[job]]\nprompt = "b"\n') == first[1:]
    assert seeds('[[job]]\nprompt = "a"\nguidance = 7.5\nsteps = 20\nsize = 512\n'
                 '[[job]]\nprompt = "b"\n') == first[:2]
    assert seeds('[[job]]\nprompt = "a"\nnegative = "blur"\n')[0] != first[0]


def test_a_base_job_is_under_the_file(tmp_path):
    (item,) = read_batch(write(tmp_path / "j.toml", '[[job]]\nprompt = "x"\n'),
                         Job(steps=7, model="tiny"))
    assert (item.job.steps, item.job.model) == (7, "tiny")


@pytest.mark.parametrize("name,text,words", [
    ("bad.toml", '[[job]]\nprompt = "x"\nsteps = \n', ["line 3"]),
    ("bad.jsonl", '{"prompt": "x"}\n\n{"prompt": "y",}\n', ["line 3", "not valid JSON"]),
    ("list.jsonl", '{"prompt": "x"}\n["y"]\n', ["line 2", "JSON object"]),
    ("key.toml", '[[job]]\nprompt = "x"\nstesp = 3\n', ["stesp", "did you mean 'steps'"]),
    ("table.toml", '[default]\nsteps = 3\n[[job]]\nprompt = "x"\n', ["unknown table 'default'"]),
    ("empty.toml", "[defaults]\nsteps = 3\n", ["no jobs"]),
    ("size.jsonl", '{"prompt": "x", "width": 1001, "height": 256}\n', ["multiple of 8"]),
    ("value.toml", '[[job]]\nprompt = "x"\n[[job]]\nprompt = "y"\nsteps = -1\n',
     ["'steps' in value.toml job 1 must be", "got -1"]),
    ("value.jsonl", '{"prompt": "x"}\n\n{"prompt": "y", "ram": -1}\n',
     ["'ram' in value.jsonl job 1 (line 3) must be"]),
    ("defaults.toml", '[defaults]\ndisk = -2\n[[job]]\nprompt = "x"\n',
     ["'disk' in defaults.toml [defaults] must be"]),
    # A job that forgot its prompt made an unconditioned image; gen refuses '' too.
    ("noprompt.toml", '[[job]]\nprompt = "x"\n[[job]]\nsteps = 4\n',
     ["noprompt.toml job 1 has no prompt", "'image'"]),
    ("blank.jsonl", '{"prompt": "  "}\n', ["blank.jsonl job 0 (line 1) has no prompt"]),
    # A number in quotes: steps = "1" ran, where size = "64" and seed = "3" were refused.
    ("quoted.toml", '[[job]]\nprompt = "x"\nsteps = "1"\n',
     ["'steps' in quoted.toml job 0 must be a whole number (write it without quotes)"]),
    ("quoted.jsonl", '{"prompt": "x", "guidance": "7.5"}\n',
     ["'guidance' in quoted.jsonl job 0 (line 1) must be a number (write it without quotes)"]),
    ("point.jsonl", '{"prompt": "x", "size": 64.0}\n',
     ["'size' in point.jsonl job 0 (line 1) must be a whole number of pixels (write it without "
      "a decimal point)"]),
    ("qsize.toml", '[[job]]\nprompt = "x"\nsize = "64"\n',
     ["'size' in qsize.toml job 0 must be a whole number of pixels (write it without quotes)"]),
])
def test_bad_batch_files_are_job_errors_that_say_where(tmp_path, name, text, words):
    with pytest.raises(JobError) as e:
        read_batch(write(tmp_path / name, text))
    for word in words:
        assert word in str(e.value)


def test_a_missing_batch_file_is_a_job_error(tmp_path):
    with pytest.raises(JobError, match="not found"):
        read_batch(tmp_path / "missing.toml")


# --- sharding -----------------------------------------------------------------------------------

def items(n: int) -> list[BatchItem]:
    return [BatchItem(i, Job(prompt=str(i)), None) for i in range(n)]


def test_three_shards_over_seven_jobs_cover_each_job_exactly_once():
    all_jobs = items(7)
    shares = [{i.index for i in my_share(all_jobs, *parse_shard(f"{r}/3", env={}))}
              for r in range(3)]
    assert set().union(*shares) == set(range(7))
    assert all(not a & b for a, b in combinations(shares, 2))
    assert sum(len(s) for s in shares) == 7


def test_shard_from_torchrun_environment():
    assert parse_shard(None, env={"RANK": "2", "WORLD_SIZE": "3"}) == (2, 3)
    assert parse_shard(None, env={"LOCAL_RANK": "1", "WORLD_SIZE": "2"}) == (1, 2)
    assert parse_shard(None, env={}) == (0, 1)
    assert parse_shard("1/4", env={"RANK": "2", "WORLD_SIZE": "3"}) == (1, 4)  # the flag wins


@pytest.mark.parametrize("shard", ["3/3", "-1/3", "1/0", "1-3", "a/b", "1/"])
def test_bad_shards_are_refused(shard):
    with pytest.raises(JobError, match="shard"):
        parse_shard(shard, env={})


def test_bad_rank_environment_is_refused():
    with pytest.raises(JobError, match="RANK"):
        parse_shard(None, env={"RANK": "x", "WORLD_SIZE": "2"})


# --- run_batch ----------------------------------------------------------------------------------

def test_run_batch_skips_existing_outputs_and_goes_on_after_a_failure(tmp_path):
    (tmp_path / "1.png").write_bytes(b"done before")

    def make(item, path):
        if item.index == 2:
            raise RuntimeError("out of memory\nsecond line")
        path.write_bytes(b"new")
        return {"path": str(path), "seed": item.index}

    seen = []
    # check_settings=False: these stand-in files carry no settings record to compare.
    outcomes = run_batch(items(4), lambda i: tmp_path / f"{i.index}.png", make,
                         tmp_path / "manifest.jsonl", on_outcome=seen.append,
                         check_settings=False)
    assert [o.status for o in outcomes] == ["done", "skipped", "failed", "done"]
    assert seen == outcomes
    assert outcomes[2].error == "out of memory"
    assert (tmp_path / "1.png").read_bytes() == b"done before"
    assert (tmp_path / "3.png").read_bytes() == b"new"
    rows = manifest(tmp_path / "manifest.jsonl")
    assert [(r["index"], r["status"]) for r in rows] == [(0, "done"), (1, "skipped"),
                                                         (2, "failed"), (3, "done")]
    assert rows[2]["error"] == "out of memory" and rows[0]["seed"] == 0


def test_run_batch_lets_an_interrupt_through(tmp_path):
    def make(item, path):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_batch(items(2), lambda i: tmp_path / f"{i.index}.png", make, None)


# --- the batch command --------------------------------------------------------------------------

def test_batch_cli_a_failed_job_does_not_stop_the_others_and_a_rerun_resumes(tmp_path, tiny_cli):
    broken = tmp_path / "broken.safetensors"  # a checkpoint by its keys: fails at its load
    save_file({"model.diffusion_model.x": torch.zeros(1), "conditioner.x": torch.zeros(1)},
              broken)
    jobs = write(tmp_path / "jobs.toml", f"""
[defaults]
{TINY}
[[job]]
prompt = "one"
[[job]]
prompt = "broken"
model = "{broken}"
[[job]]
prompt = "three"
output = "three.png"
""")
    out = tmp_path / "out"
    first = cli("batch", jobs, "-o", out)
    assert first.exit_code == 1, first.stderr
    paths = first.stdout.splitlines()  # stdout: the path of each finished image, nothing else
    assert len(paths) == 2 and paths[1] == str(out / "three.png")
    assert all(Path(p).is_file() for p in paths)
    assert "job 1 failed: " in first.stderr and "broken.safetensors" in first.stderr
    assert f"batch: 2 done, 0 skipped, 1 failed (job 1; errors in {out / 'manifest.jsonl'}; " \
        "the same command runs them again)" in first.stderr
    # After each job, the time the rest take at the pace so far (none after the last).
    assert "2 more to make: " in first.stderr and "1 more to make: " in first.stderr
    rows = manifest(out / "manifest.jsonl")
    assert [(r["index"], r["status"]) for r in rows] == [(0, "done"), (1, "failed"), (2, "done")]
    assert rows[0]["path"] == paths[0] and rows[0]["model"] == "tiny"
    assert "broken.safetensors" in rows[1]["error"]
    hashes = {p: sha256(Path(p)) for p in paths}

    again = cli("batch", jobs, "-o", out, "--json")
    assert again.exit_code == 1
    # Nothing was made this time; stdout names the images kept, with their records, and with
    # --json the failed job too, each line with its job and how it went.
    lines = json_lines(again.stdout)
    assert [(r["index"], r["status"]) for r in lines] == [(0, "skipped"), (1, "failed"),
                                                         (2, "skipped")]
    assert [r["path"] for r in lines if r["status"] == "skipped"] == paths
    assert "broken.safetensors" in lines[1]["error"]
    assert "batch: 0 done, 2 skipped, 1 failed" in again.stderr
    made, written = manifest(out / "manifest.jsonl")[:3], manifest(out / "manifest.jsonl")[3:]
    assert [r["status"] for r in written] == ["skipped", "failed", "skipped"]
    # a skipped job's line holds its image's record, as README says (it had none)
    for skipped, done in ((written[0], made[0]), (written[2], made[2])):
        assert (skipped["seed"], skipped["width"]) == (done["seed"], done["width"]), skipped
    # a line has the keys its manifest line has (a failed one lacked 'settings', a skipped
    # one 'error'), with the same values
    for said, kept in zip(lines, written):
        assert set(kept) <= set(said), (said, kept)
        assert all(said[k] == v for k, v in kept.items()), (said, kept)
    assert {p: sha256(Path(p)) for p in paths} == hashes
    assert part_files(tmp_path) == []


def two_jobs(path: Path, second: str) -> Path:
    """A TOML batch of two tiny jobs; `second`: more lines for the second."""
    return write(path, f'[defaults]\n{TINY}\n[[job]]\nprompt = "one"\n[[job]]\n'
                       f'prompt = "two"\n{second}\n')


def test_batch_cli_a_missing_model_path_stops_it_before_any_work(tmp_path, tiny_cli):
    jobs = two_jobs(tmp_path / "jobs.toml", 'model = "/nonexistent/sdxl.safetensors"')
    out = tmp_path / "out"
    result = cli("batch", jobs, "-o", out)
    assert result.exit_code == 2
    assert "error: 'model' in jobs.toml job 1: /nonexistent/sdxl.safetensors: no such file" \
        in result.stderr
    assert not (out / "manifest.jsonl").exists() and result.stdout == ""


def test_batch_model_and_device_flags_yield_to_a_jobs_own_keys(tmp_path):
    """README: "a job's own keys win over them". --model and --device replaced every job's
    model and device: a job pinned to the CPU ran on --device's, and an error about the flag's
    model blamed the job file."""
    own = write(tmp_path / "own.toml", '[[job]]\nprompt = "a"\nsize = 128\nmodel = "tiny"\n'
                                       'device = "cpu"\n')
    out = ("-o", tmp_path / "out", "--dry-run")
    result = cli("batch", own, "--model", "./nomodel", "--device", "cuda", *out)
    assert result.exit_code == 0, result.stderr  # the job's tiny on the CPU: it runs here
    theirs = write(tmp_path / "theirs.toml", '[[job]]\nprompt = "a"\nsize = 128\n')
    result = cli("batch", theirs, "--model", "./nomodel", *out)
    assert result.exit_code == 2
    assert error_lines(result.stderr)[0].startswith("error: --model ./nomodel: no such file")
    result = cli("batch", theirs, "--model", "tiny", "--device", "cuda", *out)
    assert result.exit_code == 2
    assert error_lines(result.stderr)[0].startswith("error: --device cuda: torch sees no CUDA GPU")
    missing = write(tmp_path / "missing.toml", '[[job]]\nprompt = "a"\nsize = 128\n'
                                               'model = "./nomodel"\n')
    result = cli("batch", missing, "--model", "tiny", *out)
    assert result.exit_code == 2
    assert error_lines(result.stderr)[0].startswith(
        "error: 'model' in missing.toml job 0: ./nomodel")


def test_batch_device_errors_name_what_gave_the_device(tmp_path, monkeypatch):
    """torchrun's LOCAL_RANK pick was said as "--device cuda", a flag no one gave; a job's
    "cuda:1" as "cuda"; -o with a line break blamed each job's 'output'."""
    jobs = write(tmp_path / "b.toml", '[defaults]\nsize = 128\nmodel = "tiny"\n[[job]]\n'
                                      'prompt = "a"\n[[job]]\nprompt = "b"\n')
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("RANK", "1")
    result = cli("batch", jobs, "-o", tmp_path / "out", "--dry-run")
    assert result.exit_code == 2 and error_lines(result.stderr)[0].startswith(
        "error: cuda:1 (picked by torchrun's LOCAL_RANK): torch sees no CUDA GPU"), result.stderr
    assert "--gpu NAME" in result.stderr  # a dry run: how to plan for a card instead
    own = write(tmp_path / "own.toml", '[defaults]\nsize = 128\nmodel = "tiny"\n[[job]]\n'
                                       'prompt = "a"\n[[job]]\nprompt = "b"\ndevice = "cuda:1"\n')
    result = cli("batch", own, "-o", tmp_path / "out")  # the job's own cuda:1, LOCAL_RANK's too
    assert error_lines(result.stderr)[0].startswith(
        "error: 'device' in own.toml job 1: cuda:1: torch sees no CUDA GPU"), result.stderr
    for key in ("WORLD_SIZE", "LOCAL_RANK", "RANK"):
        monkeypatch.delenv(key)
    pinned = write(tmp_path / "p.toml", '[[job]]\nprompt = "a"\nsize = 128\nmodel = "tiny"\n'
                                        'device = "cuda:1"\n')
    result = cli("batch", pinned, "-o", tmp_path / "out")
    assert error_lines(result.stderr)[0].startswith(
        "error: 'device' in p.toml job 0: cuda:1: torch sees no CUDA GPU"), result.stderr
    named = write(tmp_path / "o.toml", '[[job]]\nprompt = "a"\nsize = 128\nmodel = "tiny"\n'
                                       'output = "x.png"\n')
    result = cli("batch", named, "-o", tmp_path / "a\nb", "--dry-run")
    assert result.exit_code == 2 and "batch -o" in result.stderr and "'x.png'" not in \
        result.stderr and "line break" in result.stderr, result.stderr


@pytest.mark.parametrize("dry", [[], ["--dry-run"]])
@pytest.mark.parametrize("where", ["job", "manifest"])
def test_batch_cli_an_unwritable_place_stops_it_before_any_work(tmp_path, tiny_cli, where, dry):
    (tmp_path / "file.txt").write_text("x")  # a file where a folder should be: as root too
    output = f'output = "{tmp_path}/file.txt/two.png"' if where == "job" else ""
    jobs = two_jobs(tmp_path / "jobs.toml", output)
    out = tmp_path / "out"
    extra = ["--manifest", tmp_path / "file.txt" / "m.jsonl"] if where == "manifest" else []
    result = cli("batch", jobs, "-o", out, *extra, *dry, "--model", "tiny")
    assert result.exit_code == 2, result.stderr
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert "file.txt: it is a file" in line
    assert ("jobs.toml job 1" if where == "job" else "error: --manifest ") in line
    assert not out.exists() and result.stdout == ""


def test_batch_cli_a_manifest_that_cannot_grow_is_one_line_and_keeps_the_image(
        tmp_path, tiny_cli, monkeypatch):
    import errno

    from hires import output

    def full(path, record):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(output, "append_manifest", full)
    jobs = jsonl_jobs(tmp_path / "jobs.jsonl", 2, seed=3)
    out = tmp_path / "out"
    result = cli("batch", jobs, "-o", out)
    assert result.exit_code == 1
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert "cannot append job 0 to the manifest" in line and "No space left" in line
    assert "Traceback" not in result.stderr
    assert [p.suffix for p in out.iterdir()] == [".png"]  # job 0's image, whole


def test_batch_cli_json_and_custom_manifest(tmp_path, tiny_cli):
    jobs = jsonl_jobs(tmp_path / "jobs.jsonl", 2, seed=11)
    result = cli("batch", jobs, "-o", tmp_path / "out", "--json", "-q",
                 "--manifest", tmp_path / "m.jsonl")
    assert result.exit_code == 0, result.stderr
    records = json_lines(result.stdout)
    assert [(r["seed"], r["width"], r["height"], r["model"]) for r in records] == [
        (11, 256, 256, "tiny")] * 2
    assert [(r["index"], r["status"]) for r in records] == [(0, "done"), (1, "done")]
    assert records[0]["path"] == str(tmp_path / "out" / "job0000_256x256_s11.png")
    assert [r["status"] for r in manifest(tmp_path / "m.jsonl")] == ["done", "done"]
    assert not (tmp_path / "out" / "manifest.jsonl").exists()
    assert result.stderr == "batch: 2 done, 0 skipped, 0 failed\n"  # -q keeps only the summary


@pytest.mark.parametrize("how", ["flag", "env"])
def test_batch_cli_shards_cover_every_job_exactly_once(tmp_path, tiny_cli, how):
    jobs = jsonl_jobs(tmp_path / "jobs.jsonl", 7)
    out = tmp_path / "out"
    shares = []
    for rank in range(3):
        args = ["batch", jobs, "-o", out, "-q", "--manifest", tmp_path / f"m{rank}.jsonl"]
        if how == "flag":
            result = cli(*args, "--shard", f"{rank}/3")
        else:
            result = cli(*args, env={"RANK": str(rank), "WORLD_SIZE": "3"})
        assert result.exit_code == 0, result.stderr
        rows = manifest(tmp_path / f"m{rank}.jsonl")
        assert {r["status"] for r in rows} == {"done"}
        shares.append({r["index"] for r in rows})
    assert set().union(*shares) == set(range(7))
    assert all(not a & b for a, b in combinations(shares, 2))
    assert len(list(out.glob("*.png"))) == 7


def test_batch_cli_malformed_toml_names_the_line(tmp_path):
    jobs = write(tmp_path / "jobs.toml", '[[job]]\nprompt = "x"\nsteps = = 3\n')
    result = cli("batch", jobs, "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert error_lines(result.stderr) == result.stderr.strip().splitlines()
    assert "line 3" in result.stderr
    assert not (tmp_path / "out").exists()


def test_batch_cli_malformed_jsonl_names_the_line(tmp_path):
    jobs = write(tmp_path / "jobs.jsonl", '{"prompt": "x"}\n{"prompt": \n')
    result = cli("batch", jobs, "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert len(error_lines(result.stderr)) == 1 and "line 2" in result.stderr


def test_batch_refuses_stdout_as_its_output(tmp_path, monkeypatch):
    """'-' is stdout for gen and up; a batch writes files, never one named '-'."""
    monkeypatch.chdir(tmp_path)
    jobs = write(tmp_path / "jobs.toml", '[[job]]\nprompt = "x"\nsize = 256\noutput = "-"\n')
    result = cli("batch", jobs, "--model", "tiny", "--dry-run")
    assert result.exit_code == 2
    assert error_lines(result.stderr) == [
        "error: 'output' in jobs.toml job 0 is '-', but a batch writes files; name one"]
    other = write(tmp_path / "other.toml", '[[job]]\nprompt = "x"\nsize = 256\n')
    result = cli("batch", other, "--model", "tiny", "-o", "-")
    assert result.exit_code == 2 and "'-' (stdout) takes one image" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs.toml", "other.toml"]


def test_batch_cli_missing_file_is_a_usage_error(tmp_path):
    result = cli("batch", tmp_path / "missing.toml", "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert error_lines(result.stderr) == [f"error: batch file not found: {tmp_path}/missing.toml"]


@pytest.mark.parametrize("suffix", [".toml", ".jsonl"])
def test_batch_cli_unreadable_file_is_a_usage_error(tmp_path, suffix):
    if IS_ROOT:
        # root reads through chmod 000; a folder with the file's name is unreadable as a file.
        jobs = tmp_path / f"jobs{suffix}"
        jobs.mkdir()
    else:
        jobs = jsonl_jobs(tmp_path / f"jobs{suffix}", 1)
        jobs.chmod(0)
    result = cli("batch", jobs, "-o", tmp_path / "out")
    assert result.exit_code == 2, result.stderr
    assert len(error_lines(result.stderr)) == 1 and "Traceback" not in result.stderr


def test_batch_cli_bad_shard_is_a_usage_error(tmp_path):
    result = cli("batch", jsonl_jobs(tmp_path / "jobs.jsonl", 2), "-o", tmp_path, "--shard", "2/2")
    assert result.exit_code == 2
    assert error_lines(result.stderr) == ["error: --shard 2/2: need 0 <= I < N"]


def test_batch_cli_unknown_key_in_a_job_names_the_closest(tmp_path):
    jobs = write(tmp_path / "jobs.toml", '[[job]]\nprompt = "x"\nguidence = 3\n')
    result = cli("batch", jobs, "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert "did you mean 'guidance'" in result.stderr


# --- kill and resume: a real process killed, its batch run again -------------------------------

def test_a_killed_batch_resumes_without_redoing_finished_images(tmp_path, tiny_cli):
    # Job 1 is the slow one: the first image appears, then the kill lands during job 1.
    jobs = write(tmp_path / "jobs.jsonl", "".join(
        json.dumps({"prompt": f"job {i}", "model": "tiny", "width": 256, "height": 256,
                    "steps": steps}) + "\n" for i, steps in enumerate([2, 40, 2, 2])))
    out = tmp_path / "out"
    args = ("batch", jobs, "-o", out, "--device", "cpu")

    first = spawn_hires(*args, stderr_path=tmp_path / "first.err")
    try:
        wait_for(lambda: any(out.glob("*.png")), first)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    kept = {p: (sha256(p), p.stat().st_mtime_ns) for p in out.glob("*.png")}
    assert 1 <= len(kept) < 4, "the batch should have been killed part way"
    # The kill may land between an image's rename and its manifest row: no manifest yet.
    rows_before = len(manifest(out / "manifest.jsonl")) if (out / "manifest.jsonl").exists() else 0

    # The rerun needs no process of its own (only the kill does): in this one, the session's
    # tiny model, without a second start-up's imports and model load.
    second = cli(*args)
    assert second.exit_code == 0, second.stderr
    assert {p: (sha256(p), p.stat().st_mtime_ns) for p in kept} == kept
    rows = manifest(out / "manifest.jsonl")[rows_before:]
    status = {Path(r["path"]): r["status"] for r in rows}
    assert len(rows) == 4
    assert all(status[p] == "skipped" for p in kept)
    assert sorted(s for p, s in status.items() if p not in kept) == ["done"] * (4 - len(kept))
    assert len(list(out.glob("*.png"))) == 4
    assert part_files(out) == []


def test_a_dry_run_plans_every_job_and_writes_nothing(tmp_path):
    from PIL import Image

    from hires import __version__
    from hires.batch import name_outputs, settings_hash
    from hires.output import save_image

    jobs = write(tmp_path / "jobs.toml", '[defaults]\nsize = 2048\n'
                 '[[job]]\nprompt = "a"\n[[job]]\nprompt = "b"\naspect = "2:1"\n'
                 '[[job]]\nprompt = "made"\n[[job]]\nprompt = "tight"\nvram = 2\n')
    out = tmp_path / "out"
    items, paths = name_outputs(read_batch(jobs), out, "jobs.toml")
    made = items[2].job
    save_image(Image.new("RGB", (8, 8)), paths[2], metadata={
        "hires": __version__, "job": made.to_dict(), "result": {"settings": settings_hash(made)}})
    before = sorted(p.name for p in out.iterdir())
    result = cli("batch", jobs, "-o", out, "--dry-run", "--gpu", "h100", "--json")
    assert result.exit_code == 2  # job 3 cannot run: said, after every job was planned
    rows = json_lines(result.stdout)
    assert [(r["index"], r["status"], r["width"], r["height"]) for r in rows] == [
        (0, "to make", 2048, 2048), (1, "to make", 2048, 1024), (2, "made", 2048, 2048),
        (3, "cannot run", 2048, 2048)]
    assert rows[1]["seconds"] < rows[0]["seconds"] and rows[3]["error"].endswith(
        "try a larger vram in the job")  # its key: batch has no --vram
    assert sorted(p.name for p in out.iterdir()) == before  # no manifest, no probe files
    text = cli("batch", jobs, "-o", out, "--dry-run", "--gpu", "h100").stdout
    assert text.splitlines()[-1].startswith("total: 2 to make, ~")
    assert text.splitlines()[-1].endswith("1 made already; 1 cannot run")
    # On the CPU no job is timed: a CPU's rate is not known.
    cpu = cli("batch", jobs, "-o", out, "--dry-run", "--device", "cpu").stdout.splitlines()
    assert cpu[0].startswith("job 0: 2048x2048 -> ") and ", peak " in cpu[0] and "~" not in cpu[0]
    assert cpu[-1].startswith("total: 2 to make;")


def test_an_upscale_jobs_default_name_ends_in_its_inputs_name(tmp_path):
    from PIL import Image

    from hires.batch import name_outputs

    photo = tmp_path / "IMG 0042.png"
    Image.new("RGB", (64, 48)).save(photo)
    jobs = write(tmp_path / "jobs.toml", f'[defaults]\n{TINY}[[job]]\nimage = "{photo}"\n'
                 'seed = 3\n[[job]]\nprompt = "a fox"\nseed = 3\n')
    _, paths = name_outputs(read_batch(jobs), tmp_path / "out", "jobs.toml")
    assert [p.name for p in paths.values()] == ["job0000_256x256_s3_IMG-0042.png",
                                                "job0001_256x256_s3.png"]


def test_jobs_piped_to_batch_dash_run_and_a_rerun_of_the_same_jobs_skips_them(tmp_path,
                                                                               tiny_cli):
    lines = "# made by a script\n" + "\n".join(json.dumps(
        {"prompt": p, "model": "tiny", "width": 256, "height": 256, "steps": 1})
        for p in ("a fox", "a hen")) + "\n"
    out = tmp_path / "out"
    first = cli("batch", "-", "-o", out, input=lines)
    assert first.exit_code == 0, first.stderr
    assert len(first.stdout.splitlines()) == 2 and "batch stdin: 2 job(s)" in first.stderr
    again = cli("batch", "-", "-o", out, input=lines)  # the same jobs: the same seeds and names
    assert "batch: 0 done, 2 skipped, 0 failed" in again.stderr
    toml = f'[defaults]\n{TINY}[[job]]\nprompt = "a cat"\n'
    plan = cli("batch", "-", "-o", out, "--dry-run", input=toml)  # TOML: not starting with {
    assert plan.exit_code == 0 and "job 0: 256x256 -> " in plan.stdout
    for text, words in (('{"prompt": 1x}\n', "stdin job 0 (line 1): not valid JSON"),
                        ('[[job]]\nprompt = "a\n', "stdin is not valid TOML"),
                        ("# nothing\n", "stdin holds no jobs"),
                        ('{"prompt": "a", "colour": 1}\n', "unknown key 'colour' in stdin job 0")):
        result = cli("batch", "-", "-o", out, input=text)
        assert result.exit_code == 2 and words in result.stderr, (text, result.stderr)


def test_a_preview_batch_makes_first_stages_and_the_same_batch_without_it_the_images(
        tmp_path, tiny_cli):
    jobs = jsonl_jobs(tmp_path / "jobs.jsonl", 2, width=512, height=512, seed=4)
    out = tmp_path / "out"
    planned = cli("batch", jobs, "-o", out, "--preview", "--json", "--dry-run")
    assert [(r["width"], r["preview"]) for r in json_lines(planned.stdout)] == [(512, True)] * 2
    planned = cli("batch", jobs, "-o", out, "--preview", "--dry-run")
    assert "job 0: preview 256x256 of a 512x512 job -> " in planned.stdout  # it said 512x512
    first = cli("batch", jobs, "-o", out, "--preview", "--json")
    assert first.exit_code == 0, first.stderr
    records = json_lines(first.stdout)
    assert [(Path(r["path"]).name, r["stage"], r["width"]) for r in records] == [
        ("job0000_512x512_s4.stage0.png", 0, 256), ("job0001_512x512_s4.stage0.png", 0, 256)]
    assert "batch: 0 done, 2 skipped" in cli("batch", jobs, "-o", out, "--preview").stderr
    made = json_lines(cli("batch", jobs, "-o", out, "--preview", "--json", "--dry-run").stdout)
    assert [(r["status"], r["preview"]) for r in made] == [("made", True)] * 2
    whole = cli("batch", jobs, "-o", out, "--json")
    assert [(Path(r["path"]).name, r["width"]) for r in json_lines(whole.stdout)] == [
        ("job0000_512x512_s4.png", 512), ("job0001_512x512_s4.png", 512)]


def test_a_file_not_made_by_hires_in_a_jobs_way_stops_the_batch_before_any_work(tmp_path,
                                                                               tiny_cli):
    from PIL import Image

    out = tmp_path / "out"
    out.mkdir()
    foreign = out / "foreign.png"
    Image.new("RGB", (8, 8)).save(foreign)  # no hires record: it may be anyone's
    before = sha256(foreign)
    jobs = jsonl_jobs(tmp_path / "jobs.jsonl", 1, seed=1, output="foreign.png")
    words = f"jobs.jsonl job 0 (line 3): {foreign} exists but holds no hires settings record"
    for dry in (["--dry-run"], []):  # the dry run says what the run would meet
        result = cli("batch", jobs, "-o", out, *dry)
        assert result.exit_code == 2, result.stderr
        (line,) = error_lines(result.stderr)
        assert words in line and "--overwrite" in line
        assert result.stdout == ""
    assert tiny_cli == [] and sha256(foreign) == before  # no model loaded, nothing written
    assert sorted(p.name for p in out.iterdir()) == ["foreign.png"]
    plan = cli("batch", jobs, "-o", out, "--overwrite", "--dry-run")
    assert plan.exit_code == 0 and f"job 0: 256x256 -> {foreign}" in plan.stdout, plan.stderr
    replaced = cli("batch", jobs, "-o", out, "--overwrite", "-q")
    assert replaced.exit_code == 0, replaced.stderr
    assert replaced.stdout.splitlines() == [str(foreign)] and sha256(foreign) != before


def test_an_output_ending_in_a_slash_or_naming_a_folder_takes_the_batchs_names_in_it(
        tmp_path, tiny_cli):
    from hires.batch import name_outputs

    out = tmp_path / "out"
    (out / "there").mkdir(parents=True)
    jobs = write(tmp_path / "jobs.toml", f'[defaults]\n{TINY}seed = 1\n'
                 '[[job]]\nprompt = "a"\noutput = "sub/"\n'
                 '[[job]]\nprompt = "b"\noutput = "sub/"\n'  # two in one folder: no clash
                 '[[job]]\nprompt = "c"\noutput = "there"\n'  # a folder already, no slash
                 '[[job]]\nprompt = "d"\noutput = "{seed}/"\n'  # a template's folder
                 '[[job]]\nprompt = "e"\noutput = "sub/e"\n')  # a file name, as before
    _, paths = name_outputs(read_batch(jobs), out, "jobs.toml")
    assert [str(p.relative_to(out)) for p in paths.values()] == [
        "sub/job0000_256x256_s1.png", "sub/job0001_256x256_s1.png",
        "there/job0002_256x256_s1.png", "1/job0003_256x256_s1.png", "sub/e.png"]
    result = cli("batch", jobs, "-o", out, "-q")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [str(p) for p in paths.values()]
    assert all(p.is_file() for p in paths.values())


def test_paths_in_a_job_file_starting_with_a_tilde_are_under_home(tmp_path, monkeypatch,
                                                                  tiny_cli):
    """As a shell expands them on the command line: an 'output' of ~/a.png made a folder
    named '~' under -o, and an 'image' of ~/in.png was 'no such file'."""
    from PIL import Image

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    Image.new("RGB", (128, 128), "gray").save(home / "in.png")
    jobs = write(tmp_path / "jobs.toml", f'[defaults]\n{TINY}seed = 1\n'
                 '[[job]]\nprompt = "a"\noutput = "~/a.png"\n'
                 '[[job]]\nimage = "~/in.png"\nscale = 2\noutput = "b.png"\n')
    result = cli("batch", jobs, "-o", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [str(home / "a.png"), str(tmp_path / "out" / "b.png")]
    assert not (tmp_path / "out" / "~").exists()


def test_a_stopped_batch_says_how_far_it_got(tmp_path, monkeypatch, tiny_cli):
    """Ctrl-C in a batch said only 'interrupted': not how many images were made."""
    import hires.cli_batch

    real, calls = hires.cli_batch.make_image, []

    def stopped_in_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(hires.cli_batch, "make_image", stopped_in_the_second)
    result = cli("batch", jsonl_jobs(tmp_path / "jobs.jsonl", 3), "-o", tmp_path / "out")
    assert result.exit_code == 130, result.stderr
    assert "batch stopped after 1 of 3 jobs: 1 done, 0 skipped, 0 failed; the same command " \
        "goes on from there" in result.stderr


def test_batch_cli_a_lora_edited_since_makes_its_image_again(tmp_path, tiny_cli, tiny):
    from helpers_lora import write_tiny_lora

    lora = write_tiny_lora(tmp_path / "s.safetensors", tiny.pipe)
    jobs = write(tmp_path / "jobs.toml", f'[[job]]\nprompt = "a fox"\n{TINY}seed = 3\n'
                                         f'lora = ["{lora}:0.8"]\noutput = "fox.png"\n')
    out = tmp_path / "out"
    assert cli("batch", jobs, "-o", out).exit_code == 0
    assert "exists with the same settings, skipped" in cli("batch", jobs, "-o", out).stderr
    write_tiny_lora(lora, tiny.pipe, seed=1)  # the same name, other weights
    again = cli("batch", jobs, "-o", out)
    assert again.exit_code == 0, again.stderr
    assert f"{lora} changed since fox.png was made; the old image is kept as fox." \
        in again.stderr
    assert "batch: 1 done, 0 skipped" in again.stderr
    assert len(list(out.glob("fox.*png"))) == 2


def test_batch_cli_a_missing_addon_file_is_said_by_its_key(tmp_path, tiny_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    jobs = two_jobs(tmp_path / "jobs.toml", 'lora = ["s.safetensors:0.8"]')
    result = cli("batch", jobs, "-o", tmp_path / "out", "--dry-run")
    assert result.exit_code == 2
    assert error_lines(result.stderr) == [
        "error: 'lora' in jobs.toml job 1: s.safetensors: no such file or folder; relative "
        f"paths are read from the current folder ({tmp_path}), not the job file's"]


@pytest.mark.parametrize(("line", "said"), [
    ("control_scale = 0.5", "'control_scale' in jobs.toml job 1 has nothing to scale: add "
                            "control and control_model, or leave it out"),
    ("ip_scale = 0.5", "'ip_scale' in jobs.toml job 1 has nothing to scale: add ip_image"),
])
def test_batch_a_jobs_own_strength_without_its_add_on_is_refused(tmp_path, line, said):
    """It ran without a word, as gen's --control-scale once did; from [defaults] it passes."""
    result = cli("batch", two_jobs(tmp_path / "jobs.toml", line), "-o", tmp_path, "--dry-run")
    assert result.exit_code == 2 and said in result.stderr, result.stderr
    default = write(tmp_path / "d.toml", f'[defaults]\n{TINY}\n{line}\n[[job]]\nprompt = "x"\n')
    passed = cli("batch", default, "-o", tmp_path, "--dry-run")
    assert passed.exit_code == 0, passed.stderr


def test_null_is_not_given_for_a_commands_own_keys_too(tmp_path):
    """README: a JSONL null is a key not given. "allow_pickle": null (it allows nothing) and
    "n": null, which pandas writes for a column other rows fill, were refused ("remove the
    key") before the nulls were dropped; set, they still are."""
    path = tmp_path / "jobs.jsonl"
    path.write_text(json.dumps({"prompt": "a", "allow_pickle": None, "n": None}) + "\n")
    (item,) = read_batch(path)
    assert item.job.prompt == "a" and not item.job.allow_pickle
    for key, value in (("allow_pickle", True), ("n", 3)):
        path.write_text(json.dumps({"prompt": "a", key: value}) + "\n")
        with pytest.raises(JobError, match=f"'{key}' in jobs.jsonl job 0"):
            read_batch(path)


def test_run_batch_makes_a_job_again_where_another_stage_of_it_is_and_keeps_that_aside(
        tmp_path):
    """A batch's whole image is not made already by its --preview (stage 0) image at that
    path, nor a --preview batch's by the whole image: each is moved aside and made."""
    from PIL import Image

    from hires.record import save_stage
    from hires.runs import stage_size

    one = items(1)
    size = stage_size(one[0].job, 0)  # a preview of another size is an older hires'
    save_stage(Image.new("RGB", size), tmp_path / "0.png", one[0].job, 0)

    def make(item, path):
        save_stage(Image.new("RGB", size), path, item.job, 0)  # a preview's record
        return {"path": str(path)}

    whole = run_batch(one, lambda i: tmp_path / f"{i.index}.png", make)[0]
    assert whole.status == "done" and whole.moved_to is not None and whole.cut
    assert whole.why == "this job's stage 0 image, not its whole one"
    assert run_batch(one, lambda i: tmp_path / f"{i.index}.png", make,
                     stage=0)[0].status == "skipped"
