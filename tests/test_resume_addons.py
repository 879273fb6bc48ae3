"""Checkpoints of jobs with add-ons: gone on from only while their files are the ones the
stopped run used (by content), whatever way the same files are named."""

import os
from pathlib import Path

import pytest
import torch
from helpers_control import tiny_controlnet
from helpers_ip import write_tiny_ip_adapter
from helpers_lora import write_tiny_lora
from PIL import Image

from hires import resume
from hires.job import Job
from hires.pipeline import plan_for

# Two stages (256, 512 px): a checkpoint of stage 0 is one a stop in stage 1 leaves.
JOB = dict(prompt="a fox", model="tiny", width=512, height=512, steps=2, seed=1)


@pytest.fixture(scope="module")
def addons(tiny, tmp_path_factory) -> Path:
    """A folder of tiny add-ons: s.safetensors (a LoRA), cn/ (a ControlNet), ip/ (an
    IP-Adapter file with image_encoder/ beside it), edges.png and look.png."""
    root = tmp_path_factory.mktemp("addons")
    write_tiny_lora(root / "s.safetensors", tiny.pipe)
    tiny_controlnet(tiny.pipe.unet).save_pretrained(root / "cn")
    write_tiny_ip_adapter(root / "ip", tiny.pipe)
    for name in ("edges.png", "look.png"):
        Image.new("RGB", (64, 64), (90, 120, 30)).save(root / name)
    return root


def kept_of(tiny, out: Path, **job) -> tuple[Path, object]:
    """The checkpoint of stage 0 a run of JOB (with `job`) writing `out` keeps, and its plan."""
    one = Job(**{**JOB, **job})
    plan = plan_for(one, tiny)
    first = plan.stages[0]
    kept = resume.path_for(out)
    resume.save(kept, one, plan, 0, torch.zeros(1, 4, first.height // 8, first.width // 8),
                (torch.zeros(4), torch.ones(4)), [])
    return kept, plan


def edit_keeping_size_and_time(path: Path) -> None:
    """`path` with one byte of its end changed, its size and time as they were (cp -p)."""
    from hires.images import _sha256

    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    _sha256.cache_clear()  # the run that goes on is another process: no hash remembered


def copy_of(addons: Path, tmp_path: Path) -> Path:
    """The add-ons copied into the test's own folder (to be edited there)."""
    import shutil

    return Path(shutil.copytree(addons, tmp_path / "addons"))


def ip_job(root: Path) -> dict:
    return dict(ip_adapter=str(root / "ip" / "ip-adapter_sdxl.safetensors"),
                ip_image=str(root / "look.png"))


def test_an_ip_adapter_files_image_encoder_changed_is_not_gone_on_from(tiny, addons, tmp_path):
    root = copy_of(addons, tmp_path)
    kept, plan = kept_of(tiny, tmp_path / "fox.png", **ip_job(root))
    assert resume.stage_of(kept, Job(**JOB, **ip_job(root)), plan) == 0
    edit_keeping_size_and_time(root / "ip" / "image_encoder" / "model.safetensors")
    assert resume.stage_of(kept, Job(**JOB, **ip_job(root)), plan) is None
    assert "image_encoder" in resume.why_not(kept, Job(**JOB, **ip_job(root)), plan)


CONTROL = dict(control_model="cn", control="edges.png", control_scale=0.7)


@pytest.mark.parametrize("job, edited", [
    (dict(lora=["s.safetensors:0.8"]), "s.safetensors"),
    (CONTROL, "edges.png"),
    (CONTROL, "cn/diffusion_pytorch_model.safetensors"),
    (CONTROL, "cn/config.json"),
    (dict(ip_adapter="ip", ip_image="look.png"), "look.png"),
    (dict(ip_adapter="ip", ip_image="look.png"), "ip/ip-adapter_sdxl.safetensors"),
])
def test_an_addon_file_replaced_at_the_same_size_and_time_is_not_gone_on_from(
        tiny, addons, tmp_path, job, edited):
    root = copy_of(addons, tmp_path)
    job = {k: [str(root / v[0])] if k == "lora" else str(root / v) if isinstance(v, str) else v
           for k, v in job.items()}
    kept, plan = kept_of(tiny, tmp_path / "fox.png", **job)
    assert resume.stage_of(kept, Job(**JOB, **job), plan) == 0
    edit_keeping_size_and_time(root / edited)
    assert resume.stage_of(kept, Job(**JOB, **job), plan) is None
    assert f"{root / edited} changed since" in resume.why_not(kept, Job(**JOB, **job), plan)


def test_one_lora_spelled_other_ways_is_gone_on_from(tiny, addons, tmp_path, monkeypatch):
    project = copy_of(addons, tmp_path)
    monkeypatch.chdir(project)
    kept, plan = kept_of(tiny, tmp_path / "fox.png", lora=["s.safetensors"])
    for spelled in ("./s.safetensors", "s.safetensors:1.0", f"{project}/s.safetensors:1"):
        assert resume.stage_of(kept, Job(**JOB, lora=[spelled]), plan) == 0, spelled
    assert resume.stage_of(kept, Job(**JOB, lora=["s.safetensors:0.9"]), plan) is None
    monkeypatch.chdir(tmp_path)  # the same job run from the folder above
    assert resume.stage_of(kept, Job(**JOB, lora=["addons/s.safetensors"]), plan) == 0


def test_a_relative_path_read_in_another_folder_says_to_run_it_there(tiny, addons, tmp_path,
                                                                      monkeypatch):
    project = copy_of(addons, tmp_path)
    monkeypatch.chdir(project)
    kept, plan = kept_of(tiny, tmp_path / "fox.png", lora=["s.safetensors:0.8"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_tiny_lora(elsewhere / "s.safetensors", tiny.pipe, seed=1)
    monkeypatch.chdir(elsewhere)
    why = resume.why_not(kept, Job(**JOB, lora=["s.safetensors:0.8"]), plan)
    assert why.startswith("is of another job (lora ")
    assert why.endswith(f"its relative paths were read in {project}: run it in that folder")


@pytest.mark.parametrize("job, image", [
    (dict(control_model="cn", control="edges.png", control_scale=0.0), "edges.png"),
    (dict(ip_adapter="ip", ip_image="look.png", ip_scale=0.0), "look.png"),
])
def test_the_image_of_an_addon_at_scale_0_may_change(tiny, addons, tmp_path, job, image):
    root = copy_of(addons, tmp_path)
    job = {k: str(root / v) if isinstance(v, str) else v for k, v in job.items()}
    kept, plan = kept_of(tiny, tmp_path / "fox.png", **job)
    Image.new("RGB", (64, 64), (1, 2, 3)).save(root / image)  # unused: it makes nothing
    assert resume.stage_of(kept, Job(**JOB, **job), plan) == 0


def test_an_upscales_input_copied_back_or_touched_is_gone_on_from(tiny, addons, tmp_path):
    """Its input is compared by its sha256 (in the job's settings), not by its time too: a
    byte-identical copy (restored from a backup, cp without -p) started a stopped run over
    as 'changed since' (found by QA). Other bytes still start it over."""
    import shutil

    from hires.images import _sha256, file_sha256

    image = tmp_path / "in.png"
    shutil.copy(addons / "look.png", image)
    job = dict(image=str(image), image_sha256=file_sha256(image))
    one = Job(**{**JOB, **job})
    plan = plan_for(one, tiny, source=(64, 64))
    first = plan.stages[0]
    kept = resume.path_for(tmp_path / "up.png")
    resume.save(kept, one, plan, 0, torch.zeros(1, 4, first.height // 8, first.width // 8),
                (torch.zeros(4), torch.ones(4)), [])
    assert resume.stage_of(kept, one, plan) == 0
    os.utime(image, ns=(1, 10**18))  # touched
    shutil.copy(addons / "look.png", image)  # and copied back, its time now
    _sha256.cache_clear()
    assert resume.stage_of(kept, Job(**{**JOB, **job}), plan) == 0
    edit_keeping_size_and_time(image)
    changed = Job(**{**JOB, **job, "image_sha256": file_sha256(image)})
    assert resume.stage_of(kept, changed, plan) is None
    assert "image_sha256" in resume.why_not(kept, changed, plan)
