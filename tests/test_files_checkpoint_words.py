"""A checkpoint that cannot be kept is said in a user's words: why (no errno, no temp file's
name, no library's serializer), and what it means for a run that stops."""

import subprocess
import sys
import textwrap

import pytest
import torch
from helpers_cli import REPO, cli, subprocess_env
from safetensors import SafetensorError

from hires import resume
from hires.job import Job
from hires.plan import make_plan

INTERNALS = ("Errno", ".part", "->", "os error", "serializ", "I/O error")


def plain(text: str) -> None:
    for word in INTERNALS:
        assert word not in text, text


def test_a_folder_at_the_checkpoint_is_said_plainly(tmp_path, asked):
    (tmp_path / "g.png.resume.safetensors").mkdir()
    result = cli("gen", "x", "--model", "tiny", "--size", "256", "--steps", "1", "-o",
                 tmp_path / "g.png")
    assert result.exit_code == 0, result.stderr
    line = next(x for x in result.stderr.splitlines() if "could not keep stage 0" in x)
    assert "a folder of that name is in the way" in line
    assert "the run goes on" in line and "start the job over" in line
    plain(line)


def test_a_file_size_limit_is_said_plainly(tmp_path):
    """ulimit -f as the write meets it: safetensors says 'Error while serializing: I/O error:
    File too large (os error 27)'."""
    script = textwrap.dedent(f"""
        import resource, torch
        from hires import resume
        from hires.job import Job
        from hires.plan import make_plan
        job = Job(prompt="a fox", model="tiny", width=512, height=512, steps=2, seed=1)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
        try:
            resume.save(resume.path_for({str(tmp_path / 'g.png')!r}), job,
                        make_plan(512, 512, steps=2), 0, torch.zeros(1, 4, 128, 128),
                        (torch.zeros(4), torch.ones(4)), [])
        except OSError as e:
            print(type(e).__name__, str(e))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=subprocess_env(), cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    said = done.stdout.strip()
    assert said.startswith("CheckpointUnwritable "), said
    assert "the file size limit (ulimit -f) was reached" in said
    assert "start the job over" in said
    plain(said)
    assert list(tmp_path.iterdir()) == []  # no temp file left


@pytest.fixture
def kept_stage_0(tmp_path):
    job = Job(prompt="a fox", model="tiny", width=512, height=512, steps=2, seed=1)
    plan = make_plan(512, 512, steps=2)
    path = resume.path_for(tmp_path / "g.png")
    resume.save(path, job, plan, 0, torch.zeros(1, 4, 32, 32), (torch.zeros(4), torch.ones(4)),
                [])
    return path, job, plan


def test_a_full_disk_after_a_kept_stage_says_where_a_rerun_goes_on(kept_stage_0, monkeypatch):
    path, job, plan = kept_stage_0

    def full(tensors, where, metadata=None):
        raise SafetensorError("Error while serializing: I/O error: No space left on device "
                              "(os error 28)")

    monkeypatch.setattr(resume, "save_file", full)
    with pytest.raises(resume.CheckpointUnwritable) as caught:
        resume.save(path, job, plan, 1, torch.zeros(1, 4, 64, 64),
                    (torch.zeros(4), torch.ones(4)), [])
    said = str(caught.value)
    assert said.startswith("the disk is full"), said
    assert "go on from stage 0" in said
    plain(said.replace("(No space left on device)", ""))
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_a_file_where_the_checkpoints_folder_goes_is_said_plainly(tmp_path):
    """It said "[Errno 17] File exists: 'gsub'" (found by QA)."""
    (tmp_path / "gsub").write_text("in the way")
    kept = tmp_path / "gsub" / "x.png.resume.safetensors"
    job = Job(prompt="x", model="tiny", width=512, height=512, steps=2, seed=1)
    with pytest.raises(resume.CheckpointUnwritable) as e:
        resume.save(kept, job, make_plan(512, 512, steps=2), 0, torch.zeros(1, 4, 32, 32),
                    (torch.zeros(4), torch.ones(4)), [])
    assert str(e.value).startswith("a file is in the way of its folder; the run goes on")
    plain(str(e.value))
