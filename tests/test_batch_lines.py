"""A batch's shards from the environment and a JSONL file's broken lines: every fault said,
at once, in one line each, before any work."""

import pytest
from helpers_cli import assert_usage_error, cli, error_lines, write

from hires.batch import parse_shard
from hires.job import JobError

JOB = '"model": "tiny", "size": 128'


def jobs_file(tmp_path, n: int = 5):
    return write(tmp_path / "j.jsonl", "".join(f'{{"prompt": "p{i}", {JOB}}}\n'
                                               for i in range(n)))


def test_world_size_without_a_rank_is_refused(tmp_path):
    """Every process of a launcher that set WORLD_SIZE alone ran shard 0, exit 0: the other
    shards' jobs were never made."""
    result = cli("batch", jobs_file(tmp_path), "-o", tmp_path / "o", "--dry-run",
                 env={"WORLD_SIZE": "2"})
    assert_usage_error(result, "WORLD_SIZE=2 in the environment, but RANK is not set: set "
                       "RANK (or LOCAL_RANK) in each process, or pass --shard I/N")
    assert parse_shard(None, env={"WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == (1, 2)
    assert parse_shard(None, env={"WORLD_SIZE": "1"}) == (0, 1)
    assert parse_shard("1/2", env={"WORLD_SIZE": "2"}) == (1, 2)  # the flag says it


@pytest.mark.parametrize("env,said", [
    ({"RANK": "", "WORLD_SIZE": ""}, "RANK='' WORLD_SIZE='' in the environment"),
    ({"WORLD_SIZE": "２"}, "WORLD_SIZE='２' in the environment"),
    ({"RANK": "1_0", "WORLD_SIZE": "20"}, "RANK='1_0' WORLD_SIZE='20' in the environment")])
def test_a_shard_variable_that_is_no_plain_number_is_named_with_a_fix(env, said):
    """RANK= WORLD_SIZE= said "got WORLD_SIZE='' LOCAL_RANK=None": a variable not set, the
    empty RANK left out, and no fix."""
    with pytest.raises(JobError) as e:
        parse_shard(None, env=env)
    assert str(e.value) == (f"{said}: each must be a whole number; set them, unset them, or "
                            "pass --shard I/N")


@pytest.mark.parametrize("shard", ["1_0/20", "１/２", "1/2.0", "0x1/2"])
def test_a_shard_is_plain_digits(shard):
    """int() read '1_0/20' as 10/20 and full-width digits as digits."""
    with pytest.raises(JobError, match="--shard must look like I/N"):
        parse_shard(shard, env={})


def test_a_shard_with_no_jobs_says_so(tmp_path):
    result = cli("batch", jobs_file(tmp_path), "-o", tmp_path / "o", "--dry-run",
                 "--shard", "7/10")
    assert result.exit_code == 0, result.stderr
    assert "warning: shard 7/10 has no jobs: the file holds 5, so shards 5 and up run none" \
        in result.stderr


def test_a_jsonl_files_broken_lines_are_said_with_every_other_jobs_error(tmp_path):
    """A line that was not a JSON object hid every other job's error: fixed, the run then
    said the next; and a key given twice was taken, its last value."""
    jobs = write(tmp_path / "j.jsonl",
                 f'{{"prompt": "a", {JOB}}}\n'
                 f'{{"prompt": "b", {JOB}, "steps": 2.0}}\n'
                 f'[1, 2]\n'
                 f'{{"prompt": "c", "prompt": "d", {JOB}}}\n'
                 f'{{"prompt": "e",\n'
                 f'{{"prompt": "f", {JOB}}}\n')
    result = cli("batch", jobs, "-o", tmp_path / "o", "--dry-run")
    assert result.exit_code == 2 and result.stdout == ""
    assert error_lines(result.stderr) == [
        "error: 'steps' in j.jsonl job 1 (line 2) must be a whole number (write it without a "
        "decimal point), got 2.0",
        "error: j.jsonl job 2 (line 3): each line must be a JSON object",
        "error: j.jsonl job 3 (line 4): 'prompt' is given twice; keep one",
        "error: j.jsonl job 4 (line 5): not valid JSON (Expecting property name enclosed in "
        "double quotes)"]
    assert not (tmp_path / "o").exists()


def test_a_json_file_of_toml_is_told_to_be_named_toml(tmp_path):
    """It said "line 1: not valid JSON (Expecting value)"."""
    jobs = write(tmp_path / "jobs.json", '[defaults]\nmodel = "tiny"\n[[job]]\nprompt = "a"\n')
    result = cli("batch", jobs, "-o", tmp_path / "o", "--dry-run")
    assert_usage_error(result, f"{jobs} holds TOML, not JSON lines: name it jobs.toml, or "
                       "write one JSON object a line")


def test_a_shard_number_of_thousands_of_digits_is_refused_in_a_line(tmp_path):
    """int() refuses 4,300 digits: it ended in "ValueError: Exceeds the limit" (found by QA)."""
    huge = "9" * 5000
    with pytest.raises(JobError) as e:
        parse_shard(None, env={"RANK": "0", "WORLD_SIZE": huge})
    assert str(e.value).startswith("RANK='0' WORLD_SIZE='99999999999999999999...' in the "
                                   "environment: each must be a whole number")
    with pytest.raises(JobError, match="--shard must look like I/N"):
        parse_shard(f"0/{huge}", env={})


def test_a_json_file_of_toml_with_lists_and_long_strings_is_told_too(tmp_path):
    """Its array and string lines are no 'key =': each was said as bad JSON (found by QA)."""
    jobs = write(tmp_path / "t.json", '[defaults]\nmodel = "tiny"\nlora = [\n  "a.safetensors",'
                 '\n]\n[[job]]\nprompt = """a\nfox"""\n')
    assert_usage_error(cli("batch", jobs, "-o", tmp_path / "o", "--dry-run"),
                       f"{jobs} holds TOML, not JSON lines: name it t.toml")


def test_a_jobs_save_warning_names_the_job_as_its_dry_run_does(tmp_path, asked):
    """A real run said "warning: WebP files record no resolution: w.webp ..." without the job
    its dry run names (found by QA)."""
    jobs = write(tmp_path / "j.toml", '[defaults]\nmodel = "tiny"\nsteps = 1\nsize = 128\n'
                 '[[job]]\nprompt = "a"\n[[job]]\nprompt = "b"\noutput = "w.webp"\ndpi = 300\n')
    said = "warning: job 1: WebP files record no resolution: w.webp keeps no dpi"
    planned = cli("batch", jobs, "-o", tmp_path / "plan", "--dry-run")
    ran = cli("batch", jobs, "-o", tmp_path / "out")
    assert ran.exit_code == 0, ran.stderr
    for result in (planned, ran):
        assert said in result.stderr and result.stderr.count("WebP files record") == 1
