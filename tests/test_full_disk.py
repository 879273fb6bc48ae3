"""A disk that refuses an image's save (full, over quota, read-only) is given no more of the
run's images while it stays so: they fail at once instead of after all their work."""

from __future__ import annotations

import errno
import json
import os
from collections import namedtuple
from pathlib import Path

import pytest
from helpers_cli import cli, json_lines, write

import hires
import hires.full_disk
import hires.output
import hires.pipeline
from hires.full_disk import FullDisks
from hires.output import DiskRefused, OutputError

Usage = namedtuple("Usage", "total used free")


def jobs_file(path: Path, n: int) -> Path:
    lines = [json.dumps({"prompt": f"job {i}", "model": "tiny", "width": 256, "height": 256,
                         "steps": 1, "seed": i}) for i in range(n)]
    return write(path, "\n".join(lines) + "\n")


@pytest.fixture
def full(monkeypatch):
    """Every save fails as on a full disk, and the disk shows `free[0]` bytes free; returns
    [free, jobs run]."""
    state = [1000, []]
    real_run = hires.pipeline.run_job

    def encode(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    def run_job(job, **kwargs):
        state[1].append(job.prompt)
        return real_run(job, **kwargs)

    monkeypatch.setattr(hires.output, "_encode", encode)
    monkeypatch.setattr(hires.pipeline, "run_job", run_job)
    monkeypatch.setattr(hires.full_disk.shutil, "disk_usage",
                        lambda folder: Usage(10**12, 10**12 - state[0], state[0]))
    return state


def test_a_batch_sends_no_more_jobs_to_a_full_disk(tmp_path, asked, full):
    out = tmp_path / "out"
    result = cli("batch", jobs_file(tmp_path / "jobs.jsonl", 3), "-o", out, "--json")
    assert result.exit_code == 1
    assert full[1] == ["job 0"]  # the two after it were not run
    lines = json_lines(result.stdout)
    assert [line["status"] for line in lines] == ["failed"] * 3
    assert "No space left on device" in lines[0]["error"]
    # what it kept is named: the same command only decodes it once space is freed
    assert lines[0]["checkpoint"] == lines[0]["path"] + ".resume.safetensors"
    assert Path(lines[0]["checkpoint"]).is_file()
    assert all("checkpoint" not in line for line in lines[1:])  # not started: none kept
    for line in lines[1:]:
        assert line["error"].startswith(f"not started: {out} is on the disk that refused ")
        assert "refused job 0's image (No space left on device), which has" in line["error"]
        assert "less than this image may need" in line["error"]
        assert "free some space" in line["error"]
    manifest = json_lines((out / "manifest.jsonl").read_text())
    assert [m["status"] for m in manifest] == ["failed"] * 3
    assert manifest[0]["checkpoint"] == lines[0]["checkpoint"]
    assert "batch: 0 done, 0 skipped, 3 failed" in result.stderr
    assert not [p for p in out.iterdir() if p.suffix == ".png"]


def test_space_freed_during_a_batch_lets_the_next_job_run(tmp_path, asked, full, monkeypatch):
    result = cli("batch", jobs_file(tmp_path / "jobs.jsonl", 2), "-o", tmp_path / "out")
    assert full[1] == ["job 0"]
    full[0] = 10**11  # the user freed space: the same command runs both jobs again
    again = cli("batch", jobs_file(tmp_path / "jobs.jsonl", 2), "-o", tmp_path / "out")
    assert result.exit_code == again.exit_code == 1
    assert full[1] == ["job 0", "job 0", "job 1"]


def test_gen_n_stops_sending_images_to_a_full_disk(tmp_path, asked, full):
    result = cli("gen", "a lighthouse", "--model", "tiny", "--size", "256", "--steps", "1",
                 "--n", "3", "--seed", "5", "-o", tmp_path / "{seed}.png", "--json")
    assert result.exit_code == 1
    lines = json_lines(result.stdout)
    assert [line["status"] for line in lines] == ["failed"] * 3
    assert lines[0]["checkpoint"] == str(tmp_path / "5.png.resume.safetensors")
    assert full[1] == ["a lighthouse"]
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert "(image 1 of 3) failed: cannot write" in errors[0]
    assert all("not started: " in ln and "is on the disk that refused image 1" in ln
               for ln in errors[1:3]), errors
    assert "all 3 images failed" in errors[-1]


def _refused(folder: Path, code: int) -> DiskRefused:
    return DiskRefused("cannot write x.png", folder, code)


def test_a_full_disk_refuses_only_what_its_free_space_cannot_hold(tmp_path, monkeypatch):
    disks = FullDisks()
    free = [5 * 10**6]
    monkeypatch.setattr(hires.full_disk.shutil, "disk_usage",
                        lambda folder: Usage(10**12, 0, free[0]))
    disks.check(tmp_path / "a.png", 10**9)  # nothing refused yet: no check at all
    disks.saw(_refused(tmp_path, errno.ENOSPC), "job 2's image")
    with pytest.raises(OutputError, match=r"refused job 2's image \(No space left on device\), "
                                          r"which has 5.0 MB free, less than this image may "
                                          r"need \(1.0 GB\); free some space"):
        disks.check(tmp_path / "new" / "b.png", 10**9)  # a folder the run would make there
    disks.check(tmp_path / "c.png", 10**6)  # a small one fits
    free[0] = 2 * 10**9
    disks.check(tmp_path / "d.png", 10**9)  # space freed since


def test_another_disk_is_not_refused(tmp_path):
    disks = FullDisks()
    disks.refused[tmp_path.stat().st_dev + 1] = (_refused(tmp_path, errno.EROFS), "image 1")
    disks.check(tmp_path / "a.png", 10**12)


def test_a_quota_refuses_until_the_run_ends_and_read_only_while_it_is(tmp_path, monkeypatch):
    disks = FullDisks()
    disks.saw(_refused(tmp_path, errno.EDQUOT), "image 1")
    with pytest.raises(OutputError, match=r"\(Disk quota exceeded\), which is over its quota"):
        disks.check(tmp_path / "a.png", 1)
    read_only = [True]
    monkeypatch.setattr(hires.full_disk, "read_only", lambda folder, unknown: read_only[0])
    disks.saw(_refused(tmp_path, errno.EROFS), "image 2")
    with pytest.raises(OutputError, match=r"refused image 2 \(Read-only file system\), which "
                                          "is still read-only; make it writable"):
        disks.check(tmp_path / "a.png", 1)
    read_only[0] = False  # remounted writable
    disks.check(tmp_path / "a.png", 1)


def test_a_save_on_a_full_disk_is_a_disk_refusal_and_leaves_no_file(tmp_path, monkeypatch):
    from PIL import Image

    def encode(*args, **kwargs):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(hires.output, "_encode", encode)
    with pytest.raises(DiskRefused) as e:
        hires.output.save_image(Image.new("RGB", (8, 8)), tmp_path / "a.png")
    assert e.value.errno == errno.EDQUOT and e.value.folder == tmp_path.absolute()
    assert list(tmp_path.iterdir()) == []

    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(hires.output, "_encode", broken)
    with pytest.raises(OutputError) as other:  # not lasting: the next image may well save
        hires.output.save_image(Image.new("RGB", (8, 8)), tmp_path / "a.png")
    assert not isinstance(other.value, DiskRefused)


def test_a_read_only_disk_refuses_the_temp_file_and_is_said_as_refused(tmp_path, monkeypatch):
    """On a read-only disk the temp file's making fails, before any byte: that was a plain
    'cannot write to FOLDER', and each later image ran in full (QA 185)."""
    import tempfile

    from PIL import Image

    def mkstemp(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    with pytest.raises(DiskRefused) as e:
        hires.output.save_image(Image.new("RGB", (8, 8)), tmp_path / "a.png")
    assert e.value.errno == errno.EROFS and str(e.value) == (
        f"cannot write {tmp_path / 'a.png'}: Read-only file system")


def test_a_few_kilobytes_free_are_said_as_such():
    from hires.output import disk_amount

    assert [disk_amount(n) for n in (3_000, 250_000, 5 * 10**6, 2 * 10**9)] == [
        "3 kB", "0.2 MB", "5.0 MB", "2.0 GB"]


def test_a_checkpoint_a_read_only_disk_refuses_to_make_costs_only_resumability(
        tmp_path, asked, monkeypatch):
    """The checkpoint's temp file refused: the image failed after its work with 'choose
    another -o', where a checkpoint that cannot be kept is a warning (QA 186)."""
    import tempfile

    real = tempfile.mkstemp

    def mkstemp(*args, prefix="", **kwargs):
        if ".resume.safetensors" in prefix:
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*args, prefix=prefix, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    out = tmp_path / "a.png"
    result = cli("gen", "a lighthouse", "--model", "tiny", "--size", "512", "--steps", "1",
                 "-o", out)
    assert result.exit_code == 0, result.stderr
    assert out.is_file() and "choose another -o" not in result.stderr
    assert f"warning: could not keep stage 0 in {out}.resume.safetensors: the disk is " \
           "read-only" in result.stderr


def test_a_read_only_disk_is_said_before_the_run(tmp_path, monkeypatch):
    """The check before any work said only 'cannot write to FOLDER' of a read-only mount."""
    monkeypatch.setattr(hires.output.os, "access", lambda *args, **kwargs: False)
    monkeypatch.setattr(hires.output, "read_only", lambda folder, unknown=False: True)
    with pytest.raises(hires.output.OutputUnwritable,
                       match=r"^cannot write to .*: its disk is read-only; choose another -o$"):
        hires.output.check_writable(tmp_path / "a.png", overwrite=False)


def test_a_stage_image_the_disk_refuses_says_what_to_do(tmp_path, monkeypatch, asked):
    """A full disk at a --save-stages image stopped the job with a bare "cannot write ...:
    No space left on device" (QA 204)."""
    import hires.record

    def refused(image, path, *args, **kwargs):
        raise DiskRefused(f"cannot write {path}: No space left on device", tmp_path,
                          errno.ENOSPC)

    monkeypatch.setattr(hires.record, "save_stage", refused)
    result = cli("gen", "a fox", "--model", "tiny", "--size", "512", "--steps", "1", "--seed",
                 "1", "--save-stages", "-o", tmp_path / "f.png")
    assert result.exit_code == 1
    assert ("f.stage0.png: No space left on device (a --save-stages image); free room there, "
            "or drop --save-stages, and run the same command again") in result.stderr


def _staged(tiny):
    """A library result of three stages (256, 512, 1024 px) that kept its stage images."""
    return hires.generate("a fox", components=tiny, width=1024, height=1024, steps=1, seed=4,
                          save_stages=True)


def _refusing(name: str, code: int, folder: Path):
    """hires.output.save_image, but the disk refuses the file called `name` (errno `code`)."""
    real = hires.output.save_image

    def save_image(image, path, *args, **kwargs):
        if Path(path).name == name:
            raise DiskRefused(f"cannot write {path}: {os.strerror(code)}", folder, code)
        return real(image, path, *args, **kwargs)

    return save_image


def test_the_library_says_what_to_do_when_a_stage_image_is_refused(tmp_path, monkeypatch,
                                                                    tiny):
    """`Result.save(save_stages=True)` on a full disk gave a bare "No space left on device"
    at a stage image, and left the stage images written before it."""
    result = _staged(tiny)
    monkeypatch.setattr(hires.output, "save_image",
                        _refusing("f.stage1.png", errno.ENOSPC, tmp_path))
    with pytest.raises(DiskRefused, match=r"f\.stage1\.png: No space left on device \(a stage "
                       r"image\); free room there, or save without save_stages$"):
        result.save(tmp_path / "f.png", save_stages=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # stage 0's image not left behind
    monkeypatch.setattr(hires.output, "save_image",  # no room to free there (QA 214)
                        _refusing("f.stage1.png", errno.EROFS, tmp_path))
    with pytest.raises(DiskRefused, match=r"Read-only file system \(a stage image\); make it "
                       r"writable, or save without save_stages$"):
        result.save(tmp_path / "f.png", save_stages=True)


def test_a_refused_image_takes_back_the_stage_images_its_save_made(tmp_path, monkeypatch,
                                                                   tiny):
    """The image refused after its stage images were written: they are removed, an older one
    that was overwritten is not (it was replaced whole; only its save is undone)."""
    result = _staged(tiny)
    real = hires.output.save_image
    (tmp_path / "f.stage1.png").write_bytes(b"older")
    monkeypatch.setattr(hires.output, "save_image", _refusing("f.png", errno.ENOSPC, tmp_path))
    with pytest.raises(DiskRefused, match=r"f\.png: No space left on device; free room there, "
                       r"or save it elsewhere: the result is kept$"):
        result.save(tmp_path / "f.png", save_stages=True, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.stage1.png"]
    monkeypatch.setattr(hires.output, "save_image",  # no room to free: said so
                        _refusing("f.png", errno.EROFS, tmp_path))
    with pytest.raises(DiskRefused, match=r"f\.png: Read-only file system; make it writable, "
                       r"or save it elsewhere: the result is kept$"):
        result.save(tmp_path / "f.png")
    monkeypatch.setattr(hires.output, "save_image", real)
    result.save(tmp_path / "f.png", save_stages=True, overwrite=True)  # room again: all three
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png", "f.stage0.png",
                                                          "f.stage1.png"]
