"""An image or checkpoint renamed into place is on disk first (fsync), and the rename is synced
in its folder: after a power cut ext4 and xfs (delayed allocation) could show the new name with
an empty or cut file."""

import errno
import os
import stat
from pathlib import Path

import pytest
import torch
from PIL import Image

from hires import output, resume
from hires.job import Job
from hires.plan import make_plan

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads /proc")


@pytest.fixture
def synced(monkeypatch):
    """What os.fsync is called on, in order: ('file', its name, whether `final` exists yet)
    or ('folder', its path, whether `final` exists); set `synced.final` first."""
    real = os.fsync
    calls = []

    def spy(fd):
        where = os.readlink(f"/proc/self/fd/{fd}")
        kind = "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        calls.append((kind, where if kind == "folder" else os.path.basename(where),
                      os.path.exists(spy.final)))
        return real(fd)

    spy.calls = calls
    monkeypatch.setattr(os, "fsync", spy)
    return spy


def assert_synced_then_renamed(calls, folder: Path) -> None:
    (kind, name, there), (kind2, where, there2) = calls
    assert kind == "file" and name.endswith(".part") and not there  # before the rename
    assert (kind2, where, there2) == ("folder", str(folder), True)  # after it


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_image_is_synced_before_its_rename_and_its_folder_after(tmp_path, synced,
                                                                   overwrite):
    synced.final = tmp_path / "o.png"
    output.save_image(Image.new("RGB", (64, 64), "red"), synced.final, overwrite=overwrite)
    assert_synced_then_renamed(synced.calls, tmp_path)


def test_a_checkpoint_is_synced_before_its_rename_and_its_folder_after(tmp_path, synced):
    synced.final = resume.path_for(tmp_path / "o.png")
    job = Job(prompt="a fox", model="tiny", width=512, height=512, steps=2, seed=1)
    resume.save(synced.final, job, make_plan(512, 512, steps=2), 0, torch.zeros(1, 4, 32, 32),
                (torch.zeros(4), torch.ones(4)), [])
    assert_synced_then_renamed(synced.calls, tmp_path)


def test_a_folder_that_refuses_fsync_is_no_failure(tmp_path, monkeypatch):
    real = os.fsync

    def refuse_folders(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd)

    monkeypatch.setattr(os, "fsync", refuse_folders)
    output.save_image(Image.new("RGB", (8, 8)), tmp_path / "o.png")
    assert (tmp_path / "o.png").is_file()


def test_a_write_error_that_fsync_reports_fails_the_save_and_leaves_nothing(tmp_path,
                                                                            monkeypatch):
    """A network file system may report a failed write only at fsync: the image is not
    whole, so it is no image."""
    def failing(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(output.OutputError, match="cannot write .*o.png: Input/output error"):
        output.save_image(Image.new("RGB", (8, 8)), tmp_path / "o.png")
    assert list(tmp_path.iterdir()) == []
