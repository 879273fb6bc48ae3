"""Stage checkpoints: a stopped job goes on after its last finished stage, to the same image."""

from pathlib import Path

import numpy as np
import pytest
from helpers_cli import cli, failing_once, json_lines
from PIL import Image

import hires.pipeline
from hires import resume
from hires.cut_short import cut_short
from hires.job import Job
from hires.pipeline import generate
from hires.upscale import upscale_job

# Three stages (256, 512, 640 px): the least a stop before the last one and a resume need.
JOB = dict(prompt="a fox", model="tiny", width=640, height=640, steps=3, seed=5)


class Stop(Exception):
    """Stands for whatever stops a run: a kill, an out-of-memory error, a crash."""


def stop_at(stage: int):
    def progress(e):
        if e.stage == stage and e.phase == "denoise" and e.done == 1:
            raise Stop
    return progress



def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(int)


@pytest.fixture(scope="module")
def unbroken(tiny):
    return generate(components=tiny, **JOB)


def test_a_stopped_job_goes_on_after_its_last_stage_to_the_same_image(tiny, unbroken, tmp_path):
    kept = resume.path_for(tmp_path / "fox.png")
    with pytest.raises(Stop):
        generate(components=tiny, checkpoint=kept, progress=stop_at(2), **JOB)
    assert kept.is_file() and resume.stage_of(kept, unbroken.job, unbroken.plan) == 1
    events = []
    result = generate(components=tiny, checkpoint=kept, progress=events.append, **JOB)
    assert np.array_equal(pixels(result.image), pixels(unbroken.image))
    assert {e.stage for e in events if e.phase == "denoise"} == {2}  # stages 0 and 1: kept
    assert [r.index for r in result.stages] == [0, 1, 2]
    assert result.resumed == 1


def test_a_checkpoint_of_other_settings_is_not_resumed(tiny, tmp_path):
    kept = resume.path_for(tmp_path / "fox.png")
    with pytest.raises(Stop):
        generate(components=tiny, checkpoint=kept, progress=stop_at(2), **JOB)
    other = {**JOB, "prompt": "a hare"}
    assert resume.seed_of(kept, Job(**{**other, "seed": 9})) is None
    events = []
    generate(components=tiny, checkpoint=kept, progress=events.append, **other)
    assert {e.stage for e in events if e.phase == "denoise"} == {0, 1, 2}
    # That run kept its own stages, the last too (the caller removes the file once the image
    # is saved). A result that is to hold every stage's image starts over: a checkpoint keeps
    # latents, not images.
    assert resume.stage_of(kept, Job(**other), hires.pipeline.plan_for(Job(**other), tiny)) == 2
    events.clear()
    generate(components=tiny, checkpoint=kept, progress=events.append, save_stages=True,
             **other)
    assert {e.stage for e in events if e.phase == "denoise"} == {0, 1, 2}


def test_an_upscale_resumes_with_every_stages_fidelity(tiny, tmp_path):
    from skimage import data

    photo = tmp_path / "chelsea.png"
    Image.fromarray(data.chelsea()).resize((96, 64)).save(photo)
    job = Job(image=str(photo), model="tiny", width=768, height=512, steps=4, seed=3,
              strength=0.5)
    whole = upscale_job(job, components=tiny)
    kept = resume.path_for(tmp_path / "up.png")
    with pytest.raises(Stop):
        upscale_job(job, components=tiny, checkpoint=kept, progress=stop_at(2))
    result = upscale_job(job, components=tiny, checkpoint=kept)
    assert result.resumed == 1
    assert np.array_equal(pixels(result.image), pixels(whole.image))
    assert [r.psnr for r in result.stages] == [r.psnr for r in whole.stages]
    assert all(r.psnr is not None for r in result.stages)


def test_the_same_command_resumes_a_run_that_drew_its_seed(tmp_path, asked, monkeypatch):
    out = tmp_path / "fox.png"
    args = ("gen", "a fox", "--model", "tiny", "--size", "640", "--steps", "3", "--json",
            "-o", out)
    failing_once(monkeypatch)
    stopped = cli(*args, "-q")
    assert stopped.exit_code == 1 and not out.exists()
    kept = resume.path_for(out)
    assert kept.is_file()
    assert stopped.stderr.splitlines()[:1] == [
        f"{kept} keeps stages 0-1: the same command goes on from there"]
    result = cli(*args)
    assert result.exit_code == 0, result.stderr
    assert "resuming: stages 0-1 were kept in fox.png.resume.safetensors" in result.stderr
    (record,) = json_lines(result.stdout)
    assert record["resumed_after_stage"] == 1
    assert "warning" not in result.stderr
    assert not kept.exists()  # gone once the image is saved
    # The seed of the stopped run, and its image.
    again = cli("gen", "a fox", "--model", "tiny", "--size", "640", "--steps", "3", "--seed",
                record["seed"], "-q", "-o", tmp_path / "again.png")
    assert again.exit_code == 0, again.stderr
    assert np.array_equal(pixels(Image.open(out)), pixels(Image.open(tmp_path / "again.png")))


def test_a_batch_job_that_failed_mid_way_resumes(tmp_path, asked, monkeypatch):
    jobs = tmp_path / "jobs.toml"
    jobs.write_text('[[job]]\nprompt = "a fox"\nmodel = "tiny"\nwidth = 640\nheight = 640\n'
                    'steps = 3\noutput = "fox.png"\n', encoding="utf-8")
    failing_once(monkeypatch)
    first = cli("batch", jobs, "-o", tmp_path)
    assert first.exit_code == 1 and "job 0 failed" in first.stderr
    kept = resume.path_for(tmp_path / "fox.png")
    assert kept.is_file() and f"{kept} keeps stages 0-1" in first.stderr
    again = cli("batch", jobs, "-o", tmp_path)
    assert again.exit_code == 0, again.stderr
    assert "resuming: stages 0-1 were kept in fox.png.resume.safetensors" in again.stderr
    assert (tmp_path / "fox.png").is_file() and not kept.exists()


def test_hires_up_says_it_resumes(tmp_path, asked, monkeypatch):
    from skimage import data

    photo = tmp_path / "chelsea.png"
    Image.fromarray(data.chelsea()).resize((96, 64)).save(photo)
    args = ("up", photo, "--model", "tiny", "--scale", "8", "--steps", "4", "--seed", "3",
            "-o", tmp_path / "up.png")
    failing_once(monkeypatch)
    assert cli(*args).exit_code == 1
    again = cli(*args)
    assert again.exit_code == 0, again.stderr
    assert "resuming: stages 0-1 were kept in up.png.resume.safetensors" in again.stderr
    # Every stage's score, the kept stages' too, once each, in the stages' order.
    said = [x.split(":")[0].strip() for x in again.stderr.splitlines()
            if x.endswith("dB PSNR against the input")]
    assert said == [f"stage {i} ({w}x{h})" for i, (w, h) in
                    enumerate([(192, 128), (384, 256), (768, 512)])]


def test_a_model_changed_in_place_is_not_resumed_from(tiny_folder, tmp_path):
    import os

    job = {**JOB, "model": str(tiny_folder)}  # the session's tiny model, named by its folder
    folder = hires.load(str(tiny_folder))  # loaded from it: what a job naming it records
    kept = resume.path_for(tmp_path / "fox.png")
    with pytest.raises(Stop):
        generate(components=folder, checkpoint=kept, progress=stop_at(2), **job)
    plan = hires.pipeline.plan_for(Job(**job), folder)
    assert resume.stage_of(kept, Job(**job), plan) == 1
    weights = next(tiny_folder.rglob("*.safetensors"))
    stat = weights.stat()
    try:  # re-saved under the same name
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        assert resume.stage_of(kept, Job(**job), plan) is None
    finally:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_no_resume_starts_over(tmp_path, asked, monkeypatch):
    args = ("gen", "a fox", "--model", "tiny", "--size", "640", "--steps", "3", "--seed", "5",
            "-o", tmp_path / "fox.png")
    stages = failing_once(monkeypatch)
    assert cli(*args).exit_code == 1 and resume.path_for(tmp_path / "fox.png").exists()
    # the stages it throws away are said, by its dry run too (they went silently: QA 204)
    dry = cli(*args, "--no-resume", "--dry-run")
    assert (f"{tmp_path / 'fox.png'}: --no-resume: the run removes fox.png.resume.safetensors, "
            "which keeps stages 0-1, and starts over") in dry.stderr, dry.stderr
    stages.clear()
    result = cli(*args, "--no-resume")
    assert result.exit_code == 0, result.stderr
    assert stages == [0, 1, 2] and "resuming" not in result.stderr
    assert "--no-resume: removed fox.png.resume.safetensors, which kept stages 0-1; starting " \
        "over" in result.stderr
    assert not resume.path_for(tmp_path / "fox.png").exists()


def test_a_random_seed_is_found_again_for_a_default_name(tmp_path, asked, monkeypatch):
    args = ("gen", "a fox", "--model", "tiny", "--size", "640", "--steps", "3", "--json",
            "-o", tmp_path)  # a folder: the name says the seed
    failing_once(monkeypatch)
    assert cli(*args).exit_code == 1
    (kept,) = tmp_path.glob("*" + resume.SUFFIX)
    result = cli(*args)
    assert result.exit_code == 0, result.stderr
    (record,) = json_lines(result.stdout)
    assert resume.path_for(record["path"]) == kept and not kept.exists()
    assert f"resuming: stages 0-1 were kept in {kept.name}" in result.stderr


@pytest.mark.parametrize("again", [(), ("--no-resume",)])
def test_several_images_go_on_where_they_stopped(tmp_path, asked, monkeypatch, again):
    args = ("gen", "a fox", "--model", "tiny", "--size", "640", "--steps", "3", "--seed", "5",
            "--n", "2", "--json", "-o", tmp_path)
    stages = failing_once(monkeypatch, after=1)  # the second image's last stage
    first = cli(*args)
    assert first.exit_code == 1
    made, failed = json_lines(first.stdout)
    assert failed["status"] == "failed" and failed["seed"] == 6
    assert failed["error"] == "RuntimeError: the GPU fell off the bus"
    stages.clear()
    result = cli(*args, *again)
    assert result.exit_code == 0, result.stderr
    # The first image is kept (and reported as made), the second goes on, or starts over.
    assert json_lines(result.stdout)[0] == {**made, "status": "skipped"}
    assert [r["seed"] for r in json_lines(result.stdout)] == [5, 6]
    assert "made already by these settings, kept" in result.stderr
    assert stages == ([0, 1, 2] if again else [2])
    assert ("resuming: stages 0-1" in result.stderr) == (not again)
    assert not list(tmp_path.glob("*" + resume.SUFFIX))


def test_stage_images_are_saved_as_made_and_a_run_that_saves_them_resumes(
        tmp_path, asked, monkeypatch):
    out = tmp_path / "fox.png"
    args = ("gen", "a fox", "--model", "tiny", "--size", "640", "--steps", "3", "--seed", "5",
            "--save-stages", "-o", out)
    stages = failing_once(monkeypatch)
    first = cli(*args)
    assert first.exit_code == 1
    # Stage 0's image was written when stage 1 decoded it, before the stop in stage 2.
    assert sorted(p.name for p in tmp_path.glob("fox.stage*")) == ["fox.stage0.png"]
    stages.clear()
    again = cli(*args)
    assert again.exit_code == 0, again.stderr
    assert stages == [2] and "resuming: stages 0-1" in again.stderr
    assert sorted(p.name for p in tmp_path.glob("fox.*")) == [
        "fox.png", "fox.stage0.png", "fox.stage1.png"]
    shown = cli("info", tmp_path / "fox.stage1.png")
    assert "size 512x512" in shown.stdout and "stage 1 of a job for 640x640" in shown.stdout


@pytest.mark.parametrize("lost", ["cut short", "whole"])
def test_a_run_that_saves_stages_starts_over_without_their_images(lost, tmp_path, asked,
                                                                  monkeypatch):
    """The dry run said the run went on from the checkpoint where the run started over; and
    this job's whole image where its stage 0 image goes was written over without a word."""
    out = tmp_path / "fox.png"
    args = ("gen", "a fox", "--model", "tiny", "--size", "640", "--steps", "3", "--seed", "5",
            "--save-stages", "-o", out)
    stages = failing_once(monkeypatch)
    assert cli(*args).exit_code == 1
    stage0 = tmp_path / "fox.stage0.png"
    if lost == "cut short":  # a copy cut short keeps its record: it was taken as the stage's
        stage0.write_bytes(stage0.read_bytes()[:stage0.stat().st_size // 2])
    else:  # the job's whole image, as a record without a stage says (moved there by hand)
        from hires.output import read_metadata, save_image

        held = read_metadata(stage0)["hires"]
        result = {k: v for k, v in held["result"].items() if k != "stage"}
        save_image(Image.open(stage0).convert("RGB"), stage0, overwrite=True,
                   metadata={**held, "result": result})
        for refused in (cli(*args, "--dry-run"), cli(*args)):
            assert refused.exit_code == 2 and "fox.stage0.png" in refused.stderr and \
                "--overwrite" in refused.stderr, refused.stderr
        assert read_metadata(stage0)["hires"]["result"] == result  # kept
        return
    dry = cli(*args, "--dry-run")
    assert f"holds stages 0-1 of this job, but fox.stage0.png is {lost}" in dry.stderr and \
        "(--save-stages): the run starts over" in dry.stderr, dry.stderr
    stages.clear()
    again = cli(*args)
    assert again.exit_code == 0, again.stderr
    assert stages == [0, 1, 2]
    # It is gone: 'is not its stage image' read as if another file were there.
    said = [ln for ln in again.stderr.splitlines() if "(--save-stages): starting over" in ln]
    assert len(said) == 1 and said[0].startswith("warning: ") and f"fox.stage0.png is {lost}" \
        in said[0]
    assert cut_short(stage0) is None  # made again, whole


@pytest.mark.parametrize("how", ["removed", "added"])
def test_a_stage_image_not_on_disk_costs_no_kept_stage(how, tmp_path, asked, monkeypatch):
    """A stage image removed, or --save-stages added on resuming, threw the checkpoint away
    ("fox.stage0.png is gone (--save-stages): starting over"): hours of a 16K job's stages
    for a preview. It goes on, and says which images it does not make (QA 204)."""
    out = tmp_path / "fox.png"
    args = ("gen", "a fox", "--model", "tiny", "--size", "640", "--steps", "3", "--seed", "5",
            "-o", out)
    stages = failing_once(monkeypatch)
    assert cli(*args, *(["--save-stages"] if how == "removed" else [])).exit_code == 1
    (tmp_path / "fox.stage0.png").unlink(missing_ok=True)
    dry = cli(*args, "--save-stages", "--dry-run")
    assert ("the run goes on from fox.png.resume.safetensors: stages 0-1 kept, without "
            "fox.stage0.png, not on disk (--save-stages; --no-resume, with --seed fixing the "
            "run's seed, makes every stage's image, starting over)") in dry.stderr, dry.stderr
    stages.clear()
    again = cli(*args, "--save-stages")
    assert again.exit_code == 0, again.stderr
    assert stages == [2]
    assert ("warning: fox.png.resume.safetensors holds stages 0-1 of this job: going on from "
            "it, without fox.stage0.png") in again.stderr
    # the last kept stage is decoded again for the next: its image is made
    assert sorted(p.name for p in tmp_path.glob("fox.*")) == ["fox.png", "fox.stage1.png"]


def test_several_images_with_random_seeds_go_on_where_they_stopped(tmp_path, asked, monkeypatch):
    args = ("gen", "a fox", "--model", "tiny", "--size", "640", "--steps", "3", "--n", "2",
            "--json", "-o", tmp_path)
    stages = failing_once(monkeypatch, after=1)  # the second image's last stage
    first = cli(*args)
    assert first.exit_code == 1
    made, _ = json_lines(first.stdout)  # the second's a failed line
    assert f"seeds from {made['seed']} (--seed {made['seed']} makes these" in first.stderr
    stages.clear()
    result = cli(*args)
    assert result.exit_code == 0, result.stderr
    # The stopped image's checkpoint gave the seeds back: the first image is kept.
    assert [r["seed"] for r in json_lines(result.stdout)] == [made["seed"], made["seed"] + 1]
    assert stages == [2] and "made already by these settings, kept" in result.stderr


def test_a_run_into_a_new_folder_keeps_its_stages(tiny, tmp_path):
    # The image's folder is made when the image is saved; the checkpoint comes before it.
    kept = resume.path_for(tmp_path / "new" / "deeper" / "fox.png")
    with pytest.raises(Stop):
        generate(components=tiny, checkpoint=kept, progress=stop_at(1), **JOB)
    assert kept.is_file() and resume.seed_of(kept, Job(**JOB)) == JOB["seed"]


def test_what_a_checkpoint_keeps_reads_as_people_say_it():
    from hires.cli_resume import stages_upto

    assert (stages_upto(0), stages_upto(2)) == ("stage 0", "stages 0-2")


def test_a_run_stopped_in_its_final_decode_goes_on_with_the_decode_alone(tiny, unbroken,
                                                                         tmp_path):
    kept = resume.path_for(tmp_path / "fox.png")

    def stop_in_decode(e):
        if e.stage == 2 and e.phase == "vae-decode":
            raise Stop

    with pytest.raises(Stop):
        generate(components=tiny, checkpoint=kept, progress=stop_in_decode, **JOB)
    assert resume.stage_of(kept, unbroken.job, unbroken.plan) == 2
    events = []
    result = generate(components=tiny, checkpoint=kept, progress=events.append, **JOB)
    assert np.array_equal(pixels(result.image), pixels(unbroken.image))
    assert {e.phase for e in events} == {"vae-decode"} and result.resumed == 2
    assert [r.index for r in result.stages] == [0, 1, 2]


def test_out_of_memory_in_the_final_decode_decodes_again_without_denoising_again(
        tiny, unbroken, monkeypatch):
    import torch

    real = hires.pipeline.decode
    calls: list[int] = []

    def decode(comps, latents, tile, emit, stage, *rest, **kw):
        calls.append(stage)
        if stage == 2 and calls.count(2) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real(comps, latents, tile, emit, stage, *rest, **kw)

    monkeypatch.setattr(hires.pipeline, "decode", decode)
    events = []
    result = generate(components=tiny, progress=events.append, **JOB)
    assert calls.count(2) == 2  # the decode again ...
    assert sum(e.phase == "denoise" and e.stage == 2 and e.done == 0 for e in events) == 1
    assert any("decode ran out of GPU memory" in w for w in result.warnings)
    assert np.array_equal(pixels(result.image), pixels(unbroken.image))


def test_a_folder_made_read_only_during_the_run_is_a_runtime_error(tmp_path, asked,
                                                                   monkeypatch):
    """Exit 2 ('choose another -o') said the command was wrong; it was right when checked."""
    import hires.output
    from hires.output import OutputUnwritable

    out = tmp_path / "fox.png"
    real = hires.output.part_file

    def read_only(folder, name):
        if name == "fox.png":  # the image, after the stages (its checkpoint is written)
            raise OutputUnwritable(f"cannot write to {folder}: Permission denied; choose "
                                   "another -o")
        return real(folder, name)

    monkeypatch.setattr(hires.output, "part_file", read_only)
    result = cli("gen", "a fox", "--model", "tiny", "--size", "256", "--steps", "1", "-o", out)
    assert result.exit_code == 1, result.stderr
    assert "Permission denied" in result.stderr and not out.exists()


def test_a_full_disk_at_the_save_loses_only_the_decode(tmp_path, asked, monkeypatch):
    import errno

    import hires.png

    out = tmp_path / "fox.png"
    args = ("gen", "a fox", "--model", "tiny", "--size", "512", "--steps", "2", "--seed", "5",
            "-o", out)
    real = hires.png.write_png

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hires.png, "write_png", full)
    stopped = cli(*args)
    assert stopped.exit_code == 1 and not out.exists() and not list(tmp_path.glob(".*.part"))
    kept = resume.path_for(out)
    assert f"error: cannot write {out}: No space left on device" in stopped.stderr
    assert f"{kept} keeps every stage: the same command only decodes it" in stopped.stderr
    monkeypatch.setattr(hires.png, "write_png", real)
    result = cli(*args)
    assert result.exit_code == 0, result.stderr
    assert "only the decode is left" in result.stderr and "denoise" not in result.stderr
    assert out.is_file() and not kept.exists()


def test_info_says_what_a_checkpoint_keeps(tiny, tmp_path):
    import json

    kept = resume.path_for(tmp_path / "fox.png")
    with pytest.raises(Stop):
        generate(components=tiny, checkpoint=kept, progress=stop_at(2), **JOB)
    from hires import output

    # as any file made here: it was 0600 (mkstemp's), unreadable to others in a shared folder
    assert oct(kept.stat().st_mode & 0o777) == oct(0o666 & ~output._umask())
    shown = cli("info", kept)
    assert shown.exit_code == 0, shown.stderr
    assert f"checkpoint of {tmp_path / 'fox.png'}" in shown.stdout
    assert "prompt 'a fox'" in shown.stdout and "seed 5" in shown.stdout
    assert "keeps stages 0-1 of the job's 3, up to 512x512: the same command goes on with " \
        "stage 2" in shown.stdout
    record = json.loads(cli("info", kept, "--json").stdout)
    assert record["checkpoint"] and record["stage"] == 1 and record["job"]["seed"] == 5
    assert record["stages"] == [[256, 256], [512, 512], [640, 640]]
    (tmp_path / "cut.png.resume.safetensors").write_bytes(kept.read_bytes()[:100])
    broken = cli("info", tmp_path / "cut.png.resume.safetensors")
    assert broken.exit_code == 2 and "not a checkpoint hires can read" in broken.stderr
    whole = kept.read_bytes()
    (tmp_path / "copy.png.resume.safetensors").write_bytes(whole[:-10])  # the header is whole
    cut = cli("info", tmp_path / "copy.png.resume.safetensors")
    assert cut.exit_code == 2, cut.stdout
    assert f"truncated ({len(whole) - 10} of {len(whole)} bytes)" in cut.stderr
    assert "copy it again" in cut.stderr


def test_a_last_stage_retried_leaner_is_decoded_the_leaner_way(tiny, monkeypatch):
    import torch

    real_stage, real_decode = hires.pipeline._stage, hires.pipeline._decode_last
    decoded_with = []

    def stage(job, comps, plan, s, *rest):
        if s.index == 2 and s is plan.stages[2]:  # the planned way runs out of memory
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real_stage(job, comps, plan, s, *rest)

    def decode_last(job, comps, plan, s, *rest):
        decoded_with.append(s.strategy.label)
        return real_decode(job, comps, plan, s, *rest)

    monkeypatch.setattr(hires.pipeline, "_stage", stage)
    monkeypatch.setattr(hires.pipeline, "_decode_last", decode_last)
    result = generate(components=tiny, **JOB)
    assert result.stages[2].retried_with is not None
    assert decoded_with == [result.stages[2].retried_with] != [result.plan.stages[2].strategy.label]


def test_a_folder_where_the_checkpoint_goes_is_a_warning_not_a_failure(tmp_path, asked):
    kept = tmp_path / "g.png.resume.safetensors"
    (kept / "mine").mkdir(parents=True)  # someone's folder, with that name
    result = cli("gen", "x", "--model", "tiny", "--size", "256", "--steps", "1", "-o",
                 tmp_path / "g.png")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "g.png")
    assert "warning: could not keep stage 0" in result.stderr
    assert (kept / "mine").is_dir()


def test_a_full_disk_for_the_checkpoint_is_a_warning_not_a_failure(tmp_path, asked,
                                                                    monkeypatch):
    """safetensors' own I/O error is no OSError: the run died ('SafetensorError: ... No space
    left on device', exit 1) where only its resumability was lost."""
    from safetensors import SafetensorError

    from hires import resume

    def full(tensors, where, metadata=None):
        Path(where).write_bytes(b"half")
        raise SafetensorError("Error while serializing: I/O error: No space left on device "
                              "(os error 28)")

    monkeypatch.setattr(resume, "save_file", full)
    result = cli("gen", "x", "--model", "tiny", "--size", "256", "--steps", "1", "-o",
                 tmp_path / "g.png")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "g.png").is_file()
    assert "warning: could not keep stage 0" in result.stderr and "No space left" in \
        result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png"]  # no half-written file


def test_a_job_stopped_with_exact_vae_stats_goes_on_with_fast_ones_to_the_same_image(
        tiny, tmp_path):
    # Stage 1's latents came through the tiled VAE (decode, resize, encode) with "exact"
    # statistics; "fast" computes the same numbers, so the resumed run's image is an unbroken
    # fast run's (resume.NOT_IN_LATENTS).
    job = {**JOB, "vae_tile": 256}
    kept = resume.path_for(tmp_path / "fox.png")
    with pytest.raises(Stop):
        generate(components=tiny, checkpoint=kept, progress=stop_at(2), vae_stats="exact", **job)
    fast = generate(components=tiny, vae_stats="fast", **job)
    assert resume.stage_of(kept, fast.job, fast.plan) == 1
    result = generate(components=tiny, checkpoint=kept, vae_stats="fast", **job)
    assert result.resumed == 1
    assert np.array_equal(pixels(result.image), pixels(fast.image))


def test_a_stopped_run_goes_on_in_another_format(tmp_path, asked, monkeypatch):
    """README: the file's format may change. `-o fox.png` stopped, then `-o fox.jpg`: it
    started over without a word and left fox.png's checkpoint behind for good."""
    args = ("gen", "a fox", "--model", "tiny", "--size", "640", "--steps", "3", "--seed", "5")
    stages = failing_once(monkeypatch)
    assert cli(*args, "-o", tmp_path / "fox.png").exit_code == 1
    # another job's (seed 6) under the third name is not this one's to take
    other = tmp_path / ("fox.webp" + resume.SUFFIX)
    other.write_bytes((tmp_path / ("fox.png" + resume.SUFFIX)).read_bytes())
    dry = cli(*args, "-o", tmp_path / "fox.jpg", "--seed", "6", "--dry-run")
    assert "goes on" not in dry.stdout + dry.stderr
    dry = cli(*args, "-o", tmp_path / "fox.jpg", "--dry-run")
    assert "the run goes on from fox.png.resume.safetensors: stages 0-1 kept" in dry.stderr
    stages.clear()
    again = cli(*args, "-o", tmp_path / "fox.jpg")
    assert again.exit_code == 0, again.stderr
    assert stages == [2] and "going on from it as fox.jpg's" in again.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fox.jpg", other.name]


def test_a_checkpoint_in_another_format_is_found_in_any_case_unless_its_run_is_running(
        tmp_path, asked, monkeypatch):
    """FOX.PNG's checkpoint was missed by -o FOX.jpg; and a run making fox.png now (its lock
    held) had its checkpoint taken from under it by -o fox.jpg."""
    from hires import busy

    args = ("gen", "a fox", "--model", "tiny", "--size", "640", "--steps", "3", "--seed", "5")
    stages = failing_once(monkeypatch)
    assert cli(*args, "-o", tmp_path / "FOX.PNG").exit_code == 1
    dry = cli(*args, "-o", tmp_path / "FOX.jpg", "--dry-run")
    assert "the run goes on from FOX.PNG.resume.safetensors" in dry.stderr
    (tmp_path / ("FOX.PNG" + resume.SUFFIX)).rename(tmp_path / ("fox.png" + resume.SUFFIX))
    with busy.making(tmp_path / "fox.png"):
        dry = cli(*args, "-o", tmp_path / "fox.jpg", "--dry-run")
        assert "goes on" not in dry.stderr
        stages.clear()
        assert cli(*args, "-o", tmp_path / "fox.jpg").exit_code == 0
        assert stages == [0, 1, 2]
    assert (tmp_path / ("fox.png" + resume.SUFFIX)).is_file()  # the running run's, kept


@pytest.mark.parametrize("change", [("--dpi", "72"), ("--vae-stats", "exact")])
def test_a_run_that_saves_stages_goes_on_with_a_setting_a_resume_may_change(change, tmp_path,
                                                                            asked, monkeypatch):
    """README: the dpi, depth and VAE tiling may change when a run goes on. With
    --save-stages the stage images (their settings hash) were not this job's: 'fox.stage0.png
    already exists', and with --overwrite the kept stages were thrown away."""
    out = tmp_path / "fox.png"
    args = ("gen", "a fox", "--model", "tiny", "--size", "640", "--steps", "3", "--seed", "5",
            "--save-stages", "-o", out)
    stages = failing_once(monkeypatch)
    assert cli(*args).exit_code == 1
    dry = cli(*args, *change, "--dry-run")
    assert dry.exit_code == 0, dry.stderr
    assert "the run goes on from fox.png.resume.safetensors: stages 0-1 kept" in dry.stderr
    stages.clear()
    again = cli(*args, *change)
    assert again.exit_code == 0, again.stderr
    assert stages == [2] and "resuming: stages 0-1" in again.stderr


def test_from_a_stopped_runs_stage_image_names_its_checkpoint(tmp_path, asked, monkeypatch):
    """`gen --from NAME.stage1.png` of a stopped run made every stage again in the current
    folder without a word of the stages kept beside it (QA 204)."""
    out = tmp_path / "fox.png"
    failing_once(monkeypatch)
    assert cli("gen", "a fox", "--model", "tiny", "--size", "640", "--steps", "3", "--seed",
               "5", "--save-stages", "-o", out).exit_code == 1
    said = cli("gen", "--from", tmp_path / "fox.stage0.png", "--model", "tiny", "--dry-run")
    assert said.exit_code == 0, said.stderr
    assert (f"{resume.path_for(out)} keeps a stopped run of this job: -o {out} goes on from "
            "it") in said.stderr
    again = cli("gen", "--from", tmp_path / "fox.stage0.png", "--model", "tiny", "-o", out,
                "--dry-run")
    assert "keeps a stopped run" not in again.stderr and "goes on from" in again.stderr
    # several images: that -o, one file, is refused for them (QA 205)
    several = cli("gen", "--from", tmp_path / "fox.stage0.png", "--model", "tiny", "--n", "2",
                  "--dry-run")
    assert several.exit_code == 0 and "keeps a stopped run" not in several.stderr


def test_no_resume_without_a_seed_says_the_stopped_runs_stages_it_removes(tmp_path, asked,
                                                                           monkeypatch):
    """Without --seed, --no-resume drew a new one, and the checkpoint at the image's name (a
    name without the seed) went without a word, in the run and its dry run (QA 205); a batch's
    dry run said nothing either."""
    out = tmp_path / "fox.png"
    base = ("gen", "a fox", "--model", "tiny", "--size", "640", "--steps", "3", "-o", out)
    failing_once(monkeypatch)
    assert cli(*base, "--seed", "5").exit_code == 1
    dry = cli(*base, "--no-resume", "--dry-run")
    assert ("--no-resume: the run removes fox.png.resume.safetensors, which keeps stages 0-1 "
            "of seed 5, and starts over") in dry.stderr, dry.stderr
    jobs = tmp_path / "j.toml"
    jobs.write_text('[[job]]\nprompt = "a fox"\nmodel = "tiny"\nsize = 640\nsteps = 3\n'
                    'seed = 5\noutput = "fox.png"\n')
    batch = cli("batch", jobs, "-o", tmp_path, "--dry-run", "--no-resume")
    assert "; --no-resume: the run removes fox.png.resume.safetensors, which keeps stages " \
        "0-1, and starts over" in batch.stdout, batch.stdout
    done = cli(*base, "--no-resume")
    assert done.exit_code == 0, done.stderr
    assert "--no-resume: removed fox.png.resume.safetensors, which kept stages 0-1 of seed 5;" \
        in done.stderr


def test_save_stages_on_an_image_made_already_says_overwrite_makes_them(tmp_path, asked):
    """--save-stages on an image made already wrote no stage images without a word (QA 204)."""
    args = ("gen", "a fox", "--model", "tiny", "--size", "512", "--steps", "1", "--seed", "5",
            "-o", tmp_path / "fox.png")
    assert cli(*args).exit_code == 0
    again = cli(*args, "--save-stages")
    assert again.exit_code == 0, again.stderr
    assert "made already by these settings, kept (--overwrite makes it again, its stage " \
        "images too)" in again.stderr
    assert not list(tmp_path.glob("fox.stage*"))
