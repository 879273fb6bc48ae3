"""Two runs of one command: an image one run is making, the other leaves alone."""

import os

import pytest
from helpers_cli import cli, error_lines, json_lines, write

from hires import busy

pytestmark = pytest.mark.skipif(busy.fcntl is None, reason="no flock on this platform")


def test_a_lock_says_who_holds_it_and_goes_with_its_holder(tmp_path):
    image = tmp_path / "a.png"
    assert busy.maker(image) is None
    with busy.making(image):
        assert busy.maker(image) == os.getpid()
        with pytest.raises(busy.Busy, match=rf"pid {os.getpid()}\) is making .*a.png; wait"):
            with busy.making(image):  # another open file: flock tells them apart
                pass
        busy.remove_stale(tmp_path)  # a held lock is no leftover
        assert busy.lock_path(image).exists()
    assert busy.maker(image) is None and not busy.lock_path(image).exists()
    # A lock file left by a run killed outright is no lock; the next run takes it over.
    busy.lock_path(image).write_text("99999999")
    assert busy.maker(image) is None
    with busy.making(image):
        assert busy.maker(image) == os.getpid()
    busy.lock_path(image).write_text("99999999")
    busy.remove_stale(tmp_path)
    assert not busy.lock_path(image).exists()


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


def test_two_batches_of_one_job_file_share_its_jobs(tmp_path, asked):
    jobs = write(tmp_path / "jobs.toml", """
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
""")
    out = tmp_path / "out"
    out.mkdir()
    with busy.making(out / "one.png"):  # the other batch is at job 0
        result = cli("batch", jobs, "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    assert (f"job 0: another hires run (pid {os.getpid()}) is making it ({out / 'one.png'}), "
            "skipped") in result.stderr
    assert "batch: 1 done, 1 skipped, 0 failed" in result.stderr
    lines = json_lines(result.stdout)
    assert [(r["index"], r["status"]) for r in lines] == [(0, "skipped"), (1, "done")]
    assert "is making it" in lines[0]["error"] and not (out / "one.png").exists()
    # Once that run is gone, the same command makes what it left.
    again = cli("batch", jobs, "-o", out)
    assert again.exit_code == 0 and "batch: 1 done, 1 skipped, 0 failed" in again.stderr
    assert again.stdout.splitlines() == [str(out / "one.png"), str(out / "two.png")]


def test_a_batch_job_taken_by_another_run_meanwhile_is_skipped(tmp_path):
    from hires.batch import BatchItem, run_batch
    from hires.job import Job

    def make(item, path):  # the other run took the image between the check and the work
        raise busy.Busy(path, 4242)

    item = BatchItem(index=0, job=Job(prompt="x", seed=1), output=None)
    (outcome,) = run_batch([item], lambda i: tmp_path / "a.png", make, None)
    assert (outcome.status, outcome.error) == ("skipped", "another hires run (pid 4242) is "
                                                          "making it")
