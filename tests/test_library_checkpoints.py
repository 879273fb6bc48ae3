"""A library caller's checkpoint: a run without a seed goes on from a stopped one, a run that
starts over says why in its warnings, and `hires.resume.remove` removes only checkpoints."""

import os

import numpy as np
import pytest
from helpers_cli import cli

from hires import resume
from hires.pipeline import generate

JOB = dict(prompt="a fox", model="tiny", width=512, height=512, steps=2)  # stages 256, 512


class Stop(Exception):
    """Stands for whatever stops a run."""


def stop_at_stage_1(e) -> None:
    if e.stage == 1 and e.phase == "denoise" and e.done == 1:
        raise Stop


def stopped(tiny, kept, **job) -> None:
    with pytest.raises(Stop):
        generate(components=tiny, checkpoint=kept, progress=stop_at_stage_1, **{**JOB, **job})


def test_a_run_without_a_seed_goes_on_with_the_stopped_runs_seed(tiny, tmp_path):
    kept = resume.path_for(tmp_path / "fox.png")
    stopped(tiny, kept)  # a seed drawn at random
    drawn = resume.describe(kept)["job"]["seed"]
    result = generate(components=tiny, checkpoint=str(kept), **JOB)
    assert (result.job.seed, result.resumed, result.warnings) == (drawn, 0, [])
    again = generate(components=tiny, seed=drawn, **JOB)  # the image an unbroken run makes
    assert np.array_equal(np.asarray(result.image), np.asarray(again.image))


@pytest.mark.parametrize("how, why", [
    ("seed", "is of another job (seed 11, not 12): starting over"),
    ("garbage", "cannot be read"),
    ("save_stages", "keeps no stage images, which save_stages returns"),
])
def test_a_checkpoint_not_gone_on_from_is_said_in_the_warnings(how, why, tiny, tmp_path):
    kept = resume.path_for(tmp_path / "fox.png")
    if how == "garbage":
        kept.write_bytes(b"not a checkpoint at all")
    else:
        stopped(tiny, kept, seed=11)
    result = generate(components=tiny, checkpoint=kept, seed=11 if how == "save_stages" else 12,
                      save_stages=how == "save_stages", **JOB)
    assert result.resumed is None
    said = [w for w in result.warnings if kept.name in w]
    assert len(said) == 1 and said[0].startswith(f"{kept.name} "), result.warnings
    assert why in said[0] and said[0].endswith(": starting over"), said


def test_the_cli_says_a_checkpoint_of_another_job_once(tiny, tmp_path, asked):
    out = tmp_path / "fox.png"
    stopped(tiny, resume.path_for(out), seed=11)
    made = cli("gen", "a fox", "--model", "tiny", "--size", "512", "--steps", "2", "--seed",
               "12", "-o", out)
    assert made.exit_code == 0, made.stderr
    assert made.stderr.count("is of another job (seed 11, not 12): starting over") == 1, \
        made.stderr


def test_remove_takes_a_text_path_and_refuses_a_file_that_is_not_a_checkpoint(tiny, tmp_path):
    image = tmp_path / "fox.png"
    generate(components=tiny, seed=1, **JOB).save(image)
    with pytest.raises(ValueError, match="is not a hires checkpoint.*not removed"):
        resume.remove(image)
    assert image.is_file()
    kept = resume.path_for(image)
    stopped(tiny, kept, seed=3)
    resume.remove(str(kept))
    assert not kept.exists()
    resume.remove(str(kept))  # none there: nothing to do


def test_a_checkpoint_left_after_a_whole_run_does_not_repeat_a_seedless_image(tiny, tmp_path):
    """One that keeps every stage is an image made: a call without a seed wants a new one."""
    kept = resume.path_for(tmp_path / "fox.png")
    first = generate(components=tiny, checkpoint=kept, **JOB)  # left there, not removed
    again = generate(components=tiny, checkpoint=kept, **JOB)
    assert again.job.seed != first.job.seed and again.resumed is None
    assert any("starting over" in w for w in again.warnings), again.warnings


@pytest.mark.parametrize("kind", ["pipe", "link", "dangling"])
def test_remove_refuses_what_is_not_a_regular_file(kind, tmp_path):
    """A pipe, a device (/dev/null as root) or a link was unlinked as if a checkpoint."""
    path = tmp_path / "fox.png"
    target = tmp_path / "target.png"
    target.write_bytes(b"an image")
    if kind == "pipe":
        os.mkfifo(path)
    else:
        path.symlink_to(target if kind == "link" else tmp_path / "missing")
    with pytest.raises(ValueError, match="not removed"):
        resume.remove(path)
    assert os.path.lexists(path) and target.read_bytes() == b"an image"


def test_remove_under_a_file_is_nothing_to_remove(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    resume.remove(tmp_path / "a.png" / "b.png.resume.safetensors")  # NotADirectoryError before
