"""The image's record keeps the UNet's precision as it ran (`dtype` auto's pick), as it keeps
the VAE's; the job keeps the word asked, so `--from` and resume read old records as ever."""

import json

from helpers_cli import cli
from PIL import Image

from hires import resume
from hires.cli_jobs import build_job
from hires.errors import dtype_name
from hires.output import read_metadata, save_image

GEN = ("gen", "a fox", "--model", "tiny", "--size", "128", "--steps", "1", "--seed", "1")


def test_the_record_says_the_dtype_that_ran_and_the_job_the_one_asked(tmp_path, asked, tiny):
    out = tmp_path / "fox.png"
    result = cli(*GEN, "--json", "-o", str(out))
    assert result.exit_code == 0, result.stderr
    ran = dtype_name(tiny.dtype)  # auto on a CPU: fp32
    assert ran in ("fp32", "bf16", "fp16")
    assert json.loads(result.stdout)["dtype"] == ran
    meta = read_metadata(out)["hires"]
    assert (meta["job"]["dtype"], meta["result"]["dtype"]) == ("auto", ran)


def test_an_explicit_dtype_is_recorded_as_it_ran_and_so_are_stage_images(tmp_path, asked):
    out = tmp_path / "fox.png"
    result = cli("gen", "a fox", "--model", "tiny", "--size", "512", "--steps", "1",
                 "--dtype", "fp32", "--save-stages", "-o", str(out))
    assert result.exit_code == 0, result.stderr
    for made in (out, tmp_path / "fox.stage0.png"):
        meta = read_metadata(made)["hires"]
        assert (meta["job"]["dtype"], meta["result"]["dtype"]) == ("fp32", "fp32"), made


def test_the_library_records_it_too(tiny, tmp_path):
    import hires

    made = hires.generate("a fox", components=tiny, size=128, steps=1, seed=1)
    record = made.save(tmp_path / "fox.png")
    assert record["dtype"] == dtype_name(tiny.dtype) == resume.resolved_dtype(made.job)


def test_from_an_image_of_before_and_of_now_runs_auto(tmp_path, asked):
    made = tmp_path / "new.png"
    assert cli(*GEN, "-o", str(made)).exit_code == 0
    record = read_metadata(made)["hires"]
    del record["result"]["dtype"]  # as hires wrote it before
    old = tmp_path / "old.png"
    with Image.open(made) as image:
        save_image(image, old, metadata=record)
    for image in (old, made):
        assert build_job(None, image, {}).dtype == "auto"
        again = cli("gen", "--from", str(image), "-o", str(tmp_path / "again.png"), "--dry-run")
        assert again.exit_code == 0, again.stderr


class Stop(Exception):
    """Stands for whatever stops a run."""


def test_a_checkpoint_of_auto_goes_on_with_the_dtype_it_picked(tmp_path, asked, tiny):
    """The checkpoint keeps the dtype as before (torch's word): a stopped run of auto goes on
    under --dtype of its pick, and the finished image records that dtype."""
    import hires

    out = tmp_path / "fox.png"
    kept = resume.path_for(out)

    def progress(e):
        if e.stage == 1 and e.phase == "denoise":
            raise Stop

    try:
        hires.generate("a fox", components=tiny, size=512, steps=2, seed=1, checkpoint=kept,
                       progress=progress)
    except Stop:
        pass
    assert kept.is_file()
    ran = dtype_name(tiny.dtype)
    result = cli("gen", "a fox", "--model", "tiny", "--size", "512", "--steps", "2", "--seed",
                 "1", "--dtype", ran, "-o", str(out))
    assert result.exit_code == 0, result.stderr
    assert "resuming: stage 0 was kept in fox.png.resume.safetensors" in result.stderr
    assert read_metadata(out)["hires"]["result"]["dtype"] == ran


def test_components_of_another_dtype_are_recorded_as_they_ran(tmp_path):
    """A library caller's bf16 components with the job's dtype left at auto: the record
    said auto's pick here (fp32 on a CPU), not the bf16 that ran."""
    import hires

    comps = hires.load("tiny", dtype="bf16")
    made = hires.generate("a fox", components=comps, size=128, steps=1, seed=1)
    assert made.job.dtype == "auto"
    assert made.save(tmp_path / "fox.png")["dtype"] == "bf16"


def test_from_says_where_the_unet_ran_in_another_precision(tmp_path):
    """A bf16 image (the library's components, the job at auto) ran again in fp32 here with
    no word; the VAE's precision is kept and said, the UNet's now said."""
    import hires

    comps = hires.load("tiny", dtype="bf16")
    made = tmp_path / "bf16.png"
    hires.generate("a fox", components=comps, size=128, steps=1, seed=1).save(made)
    again = cli("plan", "--from", str(made))
    assert again.exit_code == 0, again.stderr
    note = f"--from {made}: made with the UNet in bf16, which runs in fp32 here"
    assert any(line.startswith(note) for line in again.stderr.splitlines()), again.stderr
    chosen = cli("plan", "--from", str(made), "--dtype", "fp32")
    assert "made with the UNet" not in chosen.stderr
