"""Two runs of one command: an image one run is making, the other leaves alone."""

import json
import os

import pytest
from helpers_cli import cli, error_lines, json_lines, write

from hires import busy

pytestmark = pytest.mark.skipif(busy.fcntl is None, reason="no flock on this platform")


def holder(image) -> int | None:
    """The pid of the run holding `image`'s lock (this test's, through another open file), or
    None when none holds it."""
    try:
        with busy.making(image):
            return None
    except busy.Busy as e:
        return e.pid


def test_a_lock_says_who_holds_it_and_goes_with_its_holder(tmp_path):
    image = tmp_path / "a.png"
    assert holder(image) is None
    with busy.making(image):
        assert holder(image) == os.getpid()
        with pytest.raises(busy.Busy, match=rf"pid {os.getpid()}\) is making .*a.png; wait"):
            with busy.making(image):  # another open file: flock tells them apart
                pass
        busy.remove_stale(tmp_path)  # a held lock is no leftover
        assert busy.lock_path(image).exists()
    assert holder(image) is None and not busy.lock_path(image).exists()
    # A lock file left by a run killed outright is no lock; the next run takes it over.
    busy.lock_path(image).write_text("99999999")
    assert holder(image) is None
    with busy.making(image):
        assert holder(image) == os.getpid()
    busy.lock_path(image).write_text("99999999")
    busy.remove_stale(tmp_path)
    assert not busy.lock_path(image).exists()
    # A new folder (-o new/) is made for its lock, as the save would make it: two runs into it
    # found no lock and both made its images.
    fresh = tmp_path / "new" / "b.png"
    with busy.making(fresh):
        assert holder(fresh) == os.getpid()


def test_gen_leaves_an_image_another_run_is_making_before_loading_the_model(tmp_path, asked):
    out = tmp_path / "fox.png"
    with busy.making(out):
        result = cli("gen", "a fox", "--model", "tiny", "--size", "256", "--steps", "1",
                     "-o", out, "--overwrite")
    assert result.exit_code == 2
    assert error_lines(result.stderr) == [
        f"error: another hires run (pid {os.getpid()}) is making {out}; wait for it to end, or "
        "choose another -o"]
    assert asked == [] and not out.exists()
    again = cli("gen", "a fox", "--model", "tiny", "--size", "256", "--steps", "1", "-o", out)
    assert again.exit_code == 0, again.stderr
    assert out.is_file() and not busy.lock_path(out).exists()


TWO_JOBS = """
[defaults]
model = "tiny"
width = 256
height = 256
steps = 1
[[job]]
prompt = "one"
output = "one.png"
[[job]]
prompt = "two"
output = "two.png"
"""


def test_two_batches_of_one_job_file_share_its_jobs(tmp_path, asked):
    jobs = write(tmp_path / "jobs.toml", TWO_JOBS)
    out = tmp_path / "out"
    out.mkdir()
    with busy.making(out / "one.png"):  # the other batch is at job 0
        result = cli("batch", jobs, "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    assert (f"job 0: another hires run (pid {os.getpid()}) is making it ({out / 'one.png'}), "
            "skipped") in result.stderr
    # not 'skipped' (made already): a script counting those as made counted a missing image
    assert "batch: 1 done, 0 skipped, 1 left to another run, 0 failed" in result.stderr
    lines = json_lines(result.stdout)
    assert [(r["index"], r["status"]) for r in lines] == [(0, "busy"), (1, "done")]
    assert "is making it" in lines[0]["error"] and not (out / "one.png").exists()
    manifest = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(r["index"], r["status"]) for r in manifest] == [(0, "busy"), (1, "done")]
    # Once that run is gone, the same command makes what it left.
    again = cli("batch", jobs, "-o", out)
    assert again.exit_code == 0 and "batch: 1 done, 1 skipped, 0 failed" in again.stderr
    assert again.stdout.splitlines() == [str(out / "one.png"), str(out / "two.png")]


def test_a_batch_holds_the_lock_over_its_check_and_its_work(tmp_path):
    """The check that a job's image is made and the making were two steps: a second batch
    that checked while the first made the image made it again, then failed on the file."""
    from hires.batch import BatchItem, run_batch
    from hires.job import Job

    item = BatchItem(index=0, job=Job(prompt="x", seed=1), output=None)
    path = tmp_path / "a.png"
    held = []

    def make(item, path):
        held.append(holder(path))
        return {"path": str(path)}

    (done,) = run_batch([item], lambda i: path, make, None)
    assert done.status == "done" and held == [os.getpid()]  # its own lock, held while making
    with busy.making(path):  # another batch is making it
        (skipped,) = run_batch([item], lambda i: path, make, None)
    assert (skipped.status, skipped.error) == ("busy", f"another hires run (pid "
                                                       f"{os.getpid()}) is making it")
    assert len(held) == 1  # not made again


def test_gen_finds_an_image_made_while_it_waited_for_the_lock(tmp_path, asked):
    """A second gen that looked before the first held the lock loaded the model, made the
    image again and failed on the file ('exists; pass --overwrite'), leaving a checkpoint."""
    from hires.cli_runs import made_meanwhile
    from hires.runs import plan_runs

    out = tmp_path / "fox.png"
    args = ("gen", "a fox", "--model", "tiny", "--size", "256", "--steps", "1", "--seed", "3")
    (run,) = plan_runs([job_of(args)], str(out))  # as the second run saw it: nothing there
    assert run.made is None
    assert cli(*args, "-o", out).exit_code == 0  # the first run, meanwhile
    assert made_meanwhile(run, overwrite=False).made["path"] == str(out)
    assert made_meanwhile(run, overwrite=True).made is None  # made again, as asked
    other = plan_runs([job_of(args[:-1] + ("4",))], str(out), overwrite=True)[0]
    with pytest.raises(Exception, match="already exists; pass --overwrite"):
        made_meanwhile(other, overwrite=False)


def job_of(args: tuple[str, ...]):
    """The Job `hires gen` makes of these arguments (the tiny model's, at 256 px)."""
    from hires.job import Job

    seed = int(args[args.index("--seed") + 1])
    return Job(prompt=args[1], model="tiny", width=256, height=256, steps=1, seed=seed)


def test_a_dry_run_says_an_image_another_run_is_making_as_the_run_would(tmp_path, asked):
    """gen --dry-run exited 0 while the run itself would stop there (exit 2)."""
    out = tmp_path / "fox.png"
    args = ("gen", "a fox", "--model", "tiny", "--size", "256", "--steps", "1", "-o", out)
    with busy.making(out):
        result = cli(*args, "--dry-run")
        assert result.exit_code == 2, result.stderr
        assert f"another hires run (pid {os.getpid()}) is making {out}" in result.stderr
    assert not busy.lock_path(out).exists()  # it let go, and wrote nothing
    free = cli(*args, "--dry-run")
    assert free.exit_code == 0, free.stderr
    assert not busy.lock_path(out).exists() and list(tmp_path.iterdir()) == []


def test_a_batch_dry_run_says_busy_for_an_image_another_run_is_making(tmp_path):
    """It said 'to make' (and offered that run's checkpoint) where the run says busy."""
    jobs = write(tmp_path / "jobs.toml", TWO_JOBS)
    out = tmp_path / "out"
    out.mkdir()
    with busy.making(out / "one.png"):
        result = cli("batch", jobs, "-o", out, "--dry-run", "--json")
        text = cli("batch", jobs, "-o", out, "--dry-run")
    assert result.exit_code == 0, result.stderr
    rows = json_lines(result.stdout)
    assert [(r["index"], r["status"]) for r in rows] == [(0, "busy"), (1, "to make")]
    assert f"another hires run (pid {os.getpid()}) is making it" == rows[0]["error"]
    assert text.exit_code == 0 and "1 left to another run" in text.stdout
