"""What a re-run does with what a stopped run left: images made before the stop, checkpoints
of other settings, and checkpoints that are damaged."""

import json
from pathlib import Path

import pytest
import torch
from helpers_cli import assert_usage_error, cli, failing_once, json_lines
from safetensors import safe_open
from safetensors.torch import save_file

import hires.pipeline
from hires import resume
from hires.pipeline import generate

# Two stages (256, 512 px): a stop in the second leaves the first kept.
JOB = dict(prompt="a fox", model="tiny", width=512, height=512, steps=2, seed=1)
GEN = ("gen", "a fox", "--model", "tiny", "--size", "512", "--steps", "2")


class Stop(Exception):
    """Stands for whatever stops a run: Ctrl-C, a kill, an out-of-memory error."""



def stopped_in_stage_1(tiny, out: Path, **job) -> Path:
    """The checkpoint a run of JOB (with `job`) writing `out` left when stopped in stage 1."""
    kept = resume.path_for(out)

    def progress(e):
        if e.stage == 1 and e.phase == "denoise":
            raise Stop

    with pytest.raises(Stop):
        generate(components=tiny, checkpoint=kept, progress=progress, **{**JOB, **job})
    assert kept.is_file()
    return kept


def rewrite(kept: Path, *, meta: dict | None = None, **tensors) -> None:
    """The checkpoint at `kept` with some of its metadata or tensors replaced."""
    with safe_open(str(kept), framework="pt") as f:
        held = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    save_file({**held, **tensors}, str(kept), metadata={**metadata, **(meta or {})})


# 1. Images a stopped run with a random seed made are recognised, and it goes on.

def test_prompts_on_stdin_go_on_after_a_stop_between_images(tmp_path, asked, monkeypatch):
    args = (*GEN[:1], "-", *GEN[2:], "--json", "-o", tmp_path / "sp" / "{index}.png")
    # stopped in the second prompt's first stage
    stages = failing_once(monkeypatch, at=0, after=1, error=KeyboardInterrupt)
    first = cli(*args, input="a fox\na cat\n")
    assert first.exit_code == 130
    made, stopped = json_lines(first.stdout)  # the second's line says it was stopped
    assert stopped["status"] == "interrupted" and stopped["prompt"] == "a cat"
    assert not list((tmp_path / "sp").glob("*" + resume.SUFFIX))  # stage 0 kept nothing
    assert "checkpoint" not in stopped
    stages.clear()
    again = cli(*args, input="a fox\na cat\n")
    assert again.exit_code == 0, again.stderr
    records = json_lines(again.stdout)
    assert records[0] == {**made, "status": "skipped"}
    assert [r["seed"] for r in records] == [made["seed"]] * 2
    assert "made already by these settings, kept" in again.stderr
    assert stages == [0, 1]  # the second image alone


def test_n_images_go_on_after_a_stop_between_images(tmp_path, asked, monkeypatch):
    args = (*GEN, "--n", "3", "--json", "-o", f"{tmp_path}/")
    # stopped in the second image's first stage
    stages = failing_once(monkeypatch, at=0, after=1, error=KeyboardInterrupt)
    assert cli(*args).exit_code == 130
    (made,) = list(tmp_path.glob("*.png"))
    stages.clear()
    again = cli(*args)
    assert again.exit_code == 0, again.stderr
    seeds = [r["seed"] for r in json_lines(again.stdout)]
    assert json_lines(again.stdout)[0]["path"] == str(made)
    assert seeds == [seeds[0], seeds[0] + 1, seeds[0] + 2]
    assert len(list(tmp_path.glob("*.png"))) == 3 and stages == [0, 1, 0, 1]


def test_a_finished_command_with_a_random_seed_makes_new_images(tmp_path, asked):
    args = ("gen", "a fox", "--model", "tiny", "--size", "256", "--steps", "1", "--n", "2",
            "-q", "-o", f"{tmp_path}/")
    assert cli(*args).exit_code == 0 and cli(*args).exit_code == 0
    assert len(list(tmp_path.glob("*.png"))) == 4


def test_names_by_seed_alone_make_new_images_once_all_are_made(tmp_path, asked, monkeypatch):
    """-o '{seed}.png': a finished run's second image, S+1.png, also read as the first of a
    run from S+1 that stopped; each rerun "resumed" it and made one new image, not two."""
    args = ("gen", "a fox", "--model", "tiny", "--size", "256", "--steps", "1", "--n", "2",
            "-q", "--json", "-o", f"{tmp_path}/{{seed}}.png")
    first = [r["seed"] for r in json_lines(cli(*args).stdout)]
    again = json_lines(cli(*args).stdout)
    assert [r["status"] for r in again] == ["done", "done"]
    assert not {r["seed"] for r in again} & set(first)
    assert len(list(tmp_path.glob("*.png"))) == 4
    # Stopped after its first image, or its second, such a run still goes on from its first
    # (stopped after two, it went on from its second: S+1.png read as a run from S+1's first).
    for after in (1, 2):
        stages = failing_once(monkeypatch, at=0, after=after, error=KeyboardInterrupt)
        folder = tmp_path / f"stopped{after}"
        args = (*args[:9], "3", *args[10:-1], f"{folder}/{{seed}}.png")
        assert cli(*args).exit_code == 130
        made = sorted(int(p.stem) for p in folder.glob("*.png"))
        assert len(made) == after
        stages.clear()
        again = json_lines(cli(*args).stdout)
        assert [r["seed"] for r in again] == [made[0], made[0] + 1, made[0] + 2]
        assert [r["status"] for r in again] == ["skipped"] * after + ["done"] * (3 - after)


# 2. A checkpoint is kept across settings that do not change its latents; a mismatch is said.

def test_settings_that_do_not_shape_the_latents_keep_the_checkpoint(tiny, tmp_path, asked):
    out = tmp_path / "fox.png"
    stopped_in_stage_1(tiny, out)
    result = cli(*GEN, "--seed", "1", "--dpi", "300", "--depth", "16", "--vae-tile", "256",
                 "--dtype", "fp32", "--device", "cpu", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert "resuming: stage 0 was kept in fox.png.resume.safetensors" in result.stderr


def test_a_checkpoint_of_another_seed_is_said_before_starting_over(tiny, tmp_path, asked):
    out = tmp_path / "fox.png"
    stopped_in_stage_1(tiny, out)
    # a batch's dry run warns of it too, naming the job, as gen's does (QA 186)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({**JOB, "seed": 2, "output": "fox.png"}) + "\n")
    dry = cli("batch", jobs, "-o", tmp_path, "--dry-run")
    assert dry.exit_code == 0, dry.stderr
    assert "warning: job 0: fox.png.resume.safetensors is of another job (seed 1, not 2): the " \
        "run starts over" in dry.stderr.splitlines(), dry.stderr
    result = cli(*GEN, "--seed", "2", "-o", out)
    assert result.exit_code == 0, result.stderr
    # a warning: the stages it kept are lost to this run, and a script greps for it (QA 184)
    assert ("warning: fox.png.resume.safetensors is of another job (seed 1, not 2): starting "
            "over" in result.stderr.splitlines())
    assert "resuming" not in result.stderr


def test_a_checkpoint_cut_short_is_said_before_starting_over(tiny, tmp_path, asked):
    out = tmp_path / "fox.png"
    kept = stopped_in_stage_1(tiny, out)
    kept.write_bytes(kept.read_bytes()[:-1000])
    result = cli(*GEN, "--seed", "1", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert "fox.png.resume.safetensors is truncated (" in result.stderr
    assert "bytes), a copy cut short: starting over" in result.stderr


# 3. A stage out of range is not a checkpoint hires can read.

@pytest.mark.parametrize("stage", ["5", "-1"])
def test_a_stage_out_of_range_is_refused(tiny, tmp_path, stage):
    out = tmp_path / "fox.png"
    kept = stopped_in_stage_1(tiny, out)
    rewrite(kept, meta={"stage": stage})
    shown = cli("info", kept)
    assert shown.exit_code == 2
    assert "is not a checkpoint hires can read" in shown.stderr and "delete it" in shown.stderr
    assert resume.describe(kept) is None


# 4. Latents of the wrong size, or not finite, are not resumed.

@pytest.mark.parametrize("bad", ["shape", "nan"])
def test_damaged_latents_are_not_resumed(tiny, tmp_path, asked, bad):
    out = tmp_path / "fox.png"
    kept = stopped_in_stage_1(tiny, out)
    with safe_open(str(kept), framework="pt") as f:
        latents = f.get_tensor("latents")
    latents = torch.zeros(1, 4, 8, 8) if bad == "shape" else latents * float("nan")
    rewrite(kept, latents=latents)
    if bad == "nan":  # as a stage that went wrong wrote them: its checksum theirs
        with safe_open(str(kept), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in ("latents", "mean", "std")}
        rewrite(kept, meta={"sha256": resume._checksum(tensors)})
    job = hires.job.Job(**JOB)
    plan = hires.pipeline.plan_for(job, tiny)
    assert resume.load(kept, job, plan, torch.device("cpu")) is None
    result = cli(*GEN, "--seed", "1", "--json", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert "warning: fox.png.resume.safetensors cannot be read: starting over" in \
        result.stderr.splitlines()
    assert json_lines(result.stdout)[0].get("resumed_after_stage") is None


def test_latents_changed_since_written_are_not_resumed(tiny, tmp_path, asked):
    """Bytes flipped on a disk or in a copy, still finite numbers: the run went on from them,
    exit 0, to another image recorded as the job's (found by QA). A checkpoint kept before
    the checksum (none in its header) is still gone on from."""
    out = tmp_path / "fox.png"
    kept = stopped_in_stage_1(tiny, out)
    whole = kept.read_bytes()
    with safe_open(str(kept), framework="pt") as f:
        latents, metadata = f.get_tensor("latents"), f.metadata()
    assert len(metadata["sha256"]) == 64
    changed = latents.clone()
    changed[0, 0, 0, 0] += 0.5
    rewrite(kept, latents=changed)  # its header still holds the checksum of what was written
    job = hires.job.Job(**JOB)
    plan = hires.pipeline.plan_for(job, tiny)
    assert resume.load(kept, job, plan, torch.device("cpu")) is None
    damaged = "fox.png.resume.safetensors is damaged (its numbers are not those the run wrote"
    dry = cli(*GEN, "--seed", "1", "-o", out, "--dry-run")
    assert f"{damaged}: a bad copy or disk): the run starts over" in dry.stderr, dry.stderr
    result = cli(*GEN, "--seed", "1", "--json", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert f"{damaged}: a bad copy or disk): starting over" in result.stderr, result.stderr
    # bytes flipped into a NaN are said as the same damage, not 'cannot be read' (QA 184)
    kept.write_bytes(whole)
    changed = latents.clone()
    changed[0, 0, 0, 0] = float("nan")
    rewrite(kept, latents=changed)
    assert resume.why_not(kept, job, plan).startswith("is damaged (its numbers are not those")
    assert json_lines(result.stdout)[0].get("resumed_after_stage") is None
    kept.write_bytes(whole)
    with safe_open(str(kept), framework="pt") as f:
        held = {k: f.get_tensor(k) for k in f.keys()}
    save_file(held, str(kept), metadata={k: v for k, v in metadata.items() if k != "sha256"})
    assert resume.load(kept, job, plan, torch.device("cpu")).stage == 0


# 5. --from a checkpoint says what it is.

@pytest.mark.parametrize("command", ["gen", "plan"])
def test_from_a_checkpoint_says_it_is_one(tiny, tmp_path, command):
    kept = stopped_in_stage_1(tiny, tmp_path / "fox.png")
    result = cli(command, "--from", kept)
    assert result.exit_code == 2
    assert "is the checkpoint of a stopped run, not an image" in result.stderr
    assert f"hires info {kept}" in result.stderr


def test_info_says_1_step(tmp_path, asked):
    out = tmp_path / "one.png"
    assert cli("gen", "x", "--model", "tiny", "--size", "256", "--steps", "1", "-q",
               "-o", out).exit_code == 0
    shown = cli("info", out).stdout
    assert "1 step," in shown and "1 steps" not in shown


def test_a_dry_run_says_whether_the_run_goes_on_from_a_checkpoint(tiny, tmp_path, asked):
    out = tmp_path / "fox.png"
    stopped_in_stage_1(tiny, out)
    same = cli(*GEN, "--seed", "1", "-o", out, "--dry-run")
    assert same.exit_code == 0, same.stderr
    assert f"{out}: the run goes on from fox.png.resume.safetensors: stage 0 kept" in same.stderr
    other = cli(*GEN, "--seed", "2", "-o", out, "--dry-run")
    assert f"{out}: fox.png.resume.safetensors is of another job (seed 1, not 2): the run " \
        "starts over" in other.stderr
    drawn = cli(*GEN, "-o", out, "--dry-run")  # no seed: the run takes the checkpoint's
    assert "the run goes on from fox.png.resume.safetensors" in drawn.stderr, drawn.stderr
    # and its plan says that seed: it said "a random seed (--seed fixes it)" (found by QA)
    assert "settings: seed 1, " in drawn.stdout, drawn.stdout
    as_json = json.loads(cli(*GEN, "-o", out, "--dry-run", "--json").stdout)
    assert as_json["job"]["seed"] == as_json["images"][0]["seed"] == 1
    unkept = cli(*GEN, "-o", out, "--dry-run", "--no-resume")
    assert "settings: a random seed (--seed fixes it)" in unkept.stdout, unkept.stdout
    # and its JSON says the seed is drawn (it said the checkpoint's file made it a kept one)
    unkept = json.loads(cli(*GEN, "-o", out, "--dry-run", "--json", "--no-resume").stdout)
    assert unkept["images"][0]["seed_drawn"] is True and unkept["job"]["seed"] is None
    assert as_json["images"][0]["seed_drawn"] is False
    fresh = cli(*GEN, "--seed", "1", "-o", out, "--dry-run", "--no-resume")
    assert fresh.exit_code == 0, fresh.stderr
    assert "goes on from" not in fresh.stderr  # it said so, and the run then started over
    whole = resume.path_for(out).read_bytes()
    cut = tmp_path / "cut.png"
    resume.path_for(cut).write_bytes(whole[:-10])  # a copy cut short: its header is whole
    said = cli(*GEN, "--seed", "1", "-o", cut, "--dry-run")
    assert f"cut.png.resume.safetensors is truncated ({len(whole) - 10} of {len(whole)} " \
        "bytes), a copy cut short: the run starts over" in said.stderr, said.stderr
    jobs = tmp_path / "jobs.toml"
    jobs.write_text('[[job]]\nprompt = "a fox"\nmodel = "tiny"\nwidth = 512\nheight = 512\n'
                    'steps = 2\nseed = 1\noutput = "fox.png"\n', encoding="utf-8")
    batch = cli("batch", jobs, "-o", tmp_path, "--dry-run")
    assert batch.exit_code == 0, batch.stderr
    assert "; the run goes on from fox.png.resume.safetensors: stage 0 kept" in batch.stdout
    fresh = cli("batch", jobs, "-o", tmp_path, "--dry-run", "--no-resume")
    assert fresh.exit_code == 0 and "goes on from" not in fresh.stdout, fresh.stdout
    assert resume.path_for(out).is_file()  # a dry run removes nothing


# 6. How the VAE gathers its statistics changes no latent; its precision counts as it runs
# (auto on a CPU with native bf16 is bf16), and an image's record keeps the one that ran.

def with_native_bf16(monkeypatch, native: bool) -> None:
    """This machine, for `vae_dtype` auto, as one with (or without) native bf16."""
    import hires.models

    monkeypatch.setattr(hires.models, "cpu_has_fast_bf16", lambda: native)


def test_a_checkpoint_of_the_other_vae_stats_mode_is_gone_on_from(tiny, tmp_path, asked):
    out = tmp_path / "fox.png"
    stopped_in_stage_1(tiny, out, vae_stats="exact", vae_tile=256)
    said = cli(*GEN, "--seed", "1", "--vae-tile", "256", "--vae-stats", "fast", "-o", out,
               "--dry-run")
    assert said.exit_code == 0, said.stderr
    assert f"{out}: the run goes on from fox.png.resume.safetensors: stage 0 kept" \
        in said.stderr, said.stderr
    result = cli(*GEN, "--seed", "1", "--vae-tile", "256", "--vae-stats", "fast", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert "resuming: stage 0 was kept in fox.png.resume.safetensors" in result.stderr


def test_vae_dtype_auto_is_the_precision_it_runs_in(tiny, tmp_path, asked, monkeypatch):
    with_native_bf16(monkeypatch, True)
    out = tmp_path / "fox.png"
    stopped_in_stage_1(tiny, out)  # auto: bf16 here
    said = cli(*GEN, "--seed", "1", "--vae-dtype", "bf16", "-o", out, "--dry-run")
    assert said.exit_code == 0, said.stderr
    assert f"{out}: the run goes on from fox.png.resume.safetensors: stage 0 kept" \
        in said.stderr, said.stderr
    other = cli(*GEN, "--seed", "1", "--vae-dtype", "fp32", "-o", out, "--dry-run")
    assert 'fox.png.resume.safetensors is of another job (vae_dtype "bf16", not "fp32"): ' \
        "the run starts over" in other.stderr, other.stderr


def test_a_checkpoint_whose_vae_ran_in_fp32_is_not_gone_on_from_in_bf16(tiny, tmp_path, asked,
                                                                        monkeypatch):
    out = tmp_path / "fox.png"
    with_native_bf16(monkeypatch, False)
    stopped_in_stage_1(tiny, out)  # auto: fp32 on a CPU without native bf16
    with_native_bf16(monkeypatch, True)  # the same command where auto is bf16
    said = cli(*GEN, "--seed", "1", "-o", out, "--dry-run")
    assert 'fox.png.resume.safetensors is of another job (vae_dtype "fp32", not "bf16"): ' \
        "the run starts over" in said.stderr, said.stderr


def test_the_record_keeps_the_vae_precision_that_ran_and_from_runs_it(tiny, tmp_path,
                                                                      monkeypatch):
    from hires.cli_jobs import build_job
    from hires.errors import dtype_name
    from hires.output import read_metadata

    ran = dtype_name(tiny.vae_dtype)
    path = tmp_path / "fox.png"
    record = generate(components=tiny, **{**JOB, "width": 256, "height": 256}).save(path)
    assert record["vae_dtype"] == ran
    assert read_metadata(path)["hires"]["job"]["vae_dtype"] == "auto"  # the job as asked
    # Where auto picks the same, the job stays as recorded (its fingerprint too).
    with_native_bf16(monkeypatch, ran == "bf16")
    assert build_job(None, path, {}).vae_dtype == "auto"
    # Where it would pick another, --from runs the VAE as it ran; a flag picks another.
    with_native_bf16(monkeypatch, ran != "bf16")
    assert build_job(None, path, {}).vae_dtype == ran
    assert build_job(None, path, {"vae_dtype": "auto"}).vae_dtype == "auto"


def test_stage_images_record_the_vae_precision_that_ran(tmp_path, asked, tiny):
    from hires.errors import dtype_name
    from hires.output import read_metadata

    out = tmp_path / "fox.png"
    result = cli(*GEN, "--seed", "1", "--save-stages", "-o", out)
    assert result.exit_code == 0, result.stderr
    for made in (out, tmp_path / "fox.stage0.png"):
        assert read_metadata(made)["hires"]["result"]["vae_dtype"] == dtype_name(tiny.vae_dtype)


def test_from_an_image_made_with_tiles_now_refused_says_how_to_make_it_again(tmp_path):
    """Tiles under 256 px are refused now; --from such an image said only 'vae_tile must be
    ... got 128 (in metadata of ...)', not that a flag makes it again."""
    from PIL import Image

    from hires.output import read_metadata, save_image

    made = tmp_path / "new.png"
    assert cli("gen", "x", "--model", "tiny", "--size", "256", "--steps", "1", "--vae-tile",
               "256", "-o", made).exit_code == 0
    record = read_metadata(made)["hires"]
    record["job"]["vae_tile"] = 128  # as an older hires wrote it
    old = tmp_path / "old.png"
    with Image.open(made) as image:
        save_image(image, old, metadata=record)
    refused = cli("gen", "--from", old, "-o", tmp_path / "again.png", "--dry-run", "-q")
    assert_usage_error(refused, "was made with VAE tiles of 128 px",
                       "pass --vae-tile auto to make it again")
    assert cli("gen", "--from", old, "-o", tmp_path / "again.png", "--dry-run", "--vae-tile",
               "auto").exit_code == 0


def test_a_batch_dry_run_says_an_upscale_goes_on_from_its_checkpoint(tmp_path, monkeypatch):
    """An upscale's checkpoint records its input's sha256: the batch dry run compared it with
    the job as read (none), and said "the run starts over" where the run went on from it."""
    from PIL import Image

    Image.effect_noise((160, 120), 40).convert("RGB").save(tmp_path / "in.png")
    jobs = tmp_path / "up.toml"
    jobs.write_text(f'[[job]]\nimage = "{tmp_path / "in.png"}"\nscale = 4\nmodel = "tiny"\n'
                    'steps = 3\nseed = 5\noutput = "big.png"\n', encoding="utf-8")
    failing_once(monkeypatch, at=1)
    assert cli("batch", jobs, "-o", tmp_path / "out").exit_code == 1
    dry = cli("batch", jobs, "-o", tmp_path / "out", "--dry-run")
    assert dry.exit_code == 0, dry.stderr
    assert "the run goes on from big.png.resume.safetensors: stage 0 kept" in dry.stdout, \
        dry.stdout
