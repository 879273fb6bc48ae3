"""hires.runs: the images of one command, named and checked before any model loads."""

import json
from pathlib import Path

import pytest
from PIL import Image

from hires.job import Job, JobError
from hires.output import OutputExists, OutputUsage
from hires.pipeline import Result
from hires.runs import plan_runs

JOB = Job(prompt="a fox", width=512, height=256, model="tiny", linfusion="none")


def jobs(job: Job, prompts: list[str]) -> list[Job]:
    return [job.merged({"prompt": p}) for p in prompts]


def test_each_prompt_n_times_with_seeds_counting_up(tmp_path):
    runs = plan_runs(jobs(JOB.merged({"seed": 7}), ["a fox", "a hen"]), str(tmp_path), n=2)
    assert [(r.job.prompt, r.job.seed) for r in runs] == [
        ("a fox", 7), ("a fox", 8), ("a hen", 7), ("a hen", 8)]
    assert [r.path.name for r in runs] == [f"hires_512x256_s{s}_{i:03d}.png"
                                           for i, s in enumerate((7, 8, 7, 8))]
    assert all(r.made is None for r in runs)


def test_one_random_seed_for_the_command_and_a_template_names_files(tmp_path):
    runs = plan_runs(jobs(JOB, ["a fox", "a hen"]), str(tmp_path / "{prompt}-{seed}.webp"),
                     n=2)
    s = runs[0].job.seed
    assert [r.job.seed for r in runs] == [s, s + 1, s, s + 1]  # as --seed s would make them
    assert [r.path.name for r in runs] == [f"a-fox-{s}.webp", f"a-fox-{s + 1}.webp",
                                           f"a-hen-{s}.webp", f"a-hen-{s + 1}.webp"]
    assert {r.job.format for r in runs} == {"webp"}  # the suffix decides
    assert plan_runs([JOB], str(tmp_path))[0].job.seed != s  # a new draw


@pytest.mark.parametrize("output,n,prompts,message", [
    ("one.png", 2, ["a fox"], "folder or a template"),
    ("{seed}.png", 1, ["a fox", "a hen"], "both write"),
    ("x.jpg", 1, ["a fox"], "--format is png"),
])
def test_names_that_cannot_work_are_refused(tmp_path, output, n, prompts, message):
    with pytest.raises((JobError, OutputUsage), match=message):
        plan_runs(jobs(JOB.merged({"seed": 1}), prompts), str(tmp_path / output), n=n,
                  fmt_flag="png" if output.endswith(".jpg") else None)


def test_an_image_this_job_made_is_kept_and_other_files_are_refused(tmp_path):
    job = JOB.merged({"seed": 3})
    (run,) = plan_runs([job], str(tmp_path))
    Result(Image.new("RGB", (512, 256)), run.job, None, [], 1.0, None).save(run.path)
    (again,) = plan_runs([job], str(tmp_path))
    assert again.made is not None and again.made["seed"] == 3
    assert again.made["path"] == str(run.path)
    # Another prompt's image under that name is not this job's; --overwrite makes it anew.
    with pytest.raises(OutputExists, match="--overwrite"):
        plan_runs(jobs(job, ["a hen"]), str(run.path))
    (forced,) = plan_runs([job], str(tmp_path), overwrite=True)
    assert forced.made is None


def test_several_inputs_are_named_for_their_files(tmp_path):
    ups = [JOB.merged({"image": str(tmp_path / name), "seed": 5})
           for name in ("IMG_0042.jpg", "my photo.png")]
    assert [r.path.name for r in plan_runs(ups, str(tmp_path))] == [
        "hires_512x256_s5_IMG_0042.png", "hires_512x256_s5_my-photo.png"]
    assert [r.path.name for r in plan_runs(ups, str(tmp_path / "{name}_x2.jpg"))] == [
        "IMG_0042_x2.jpg", "my-photo_x2.jpg"]


def test_one_inputs_default_name_ends_in_its_files_name_but_a_name_given_is_kept(tmp_path):
    up = JOB.merged({"image": str(tmp_path / "IMG 0042.jpg"), "seed": 5})
    (to_folder,) = plan_runs([up], str(tmp_path))
    assert to_folder.path == tmp_path / "hires_512x256_s5_IMG-0042.png"
    (here,) = plan_runs([up], None)
    assert here.path == Path("hires_512x256_s5_IMG-0042.png")
    (given,) = plan_runs([up], str(tmp_path / "hires_512x256_s5.png"))
    assert given.path == tmp_path / "hires_512x256_s5.png"
    (prompted,) = plan_runs([JOB.merged({"seed": 5})], str(tmp_path))  # no input: no name
    assert prompted.path.name == "hires_512x256_s5.png"


def test_images_made_with_a_control_image_edited_since_are_not_kept_as_made(tmp_path, asked,
                                                                              tiny):
    from helpers_cli import cli
    from helpers_control import tiny_controlnet

    tiny_controlnet(tiny.pipe.unet).save_pretrained(tmp_path / "cn")
    edges = tmp_path / "edges.png"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(edges)
    args = ("gen", "a fox", "--model", "tiny", "--size", "256", "--steps", "1", "--seed", "3",
            "--n", "2", "--control-model", tmp_path / "cn", "--control", edges,
            "-o", f"{tmp_path / 'out'}/")
    assert cli(*args).exit_code == 0
    assert "made already by these settings, kept" in cli(*args).stderr
    Image.new("RGB", (64, 64), (10, 200, 10)).save(edges)  # the same name, another image
    again = cli(*args)
    assert again.exit_code != 0
    assert f"was made with {edges} as it was before an edit (its sha256 differs); pass " \
        "--overwrite to make it again" in again.stderr
    assert cli(*args, "--overwrite").exit_code == 0
    assert "made already by these settings, kept" in cli(*args).stderr


def test_json_says_whether_an_image_was_made_now_or_kept(tmp_path, asked):
    """A kept image's line was its record as saved then (its seconds too): a script adding
    up the run's time, or its new images, could not tell it from one made now."""
    from helpers_cli import cli, json_lines

    args = ("gen", "a fox", "--model", "tiny", "--size", "256", "--steps", "1", "--seed", "3",
            "--n", "2", "-o", f"{tmp_path}/", "--json")
    first = cli(*args)
    assert first.exit_code == 0, first.stderr
    made = json_lines(first.stdout)
    assert [r["status"] for r in made] == ["done", "done"]
    (tmp_path / Path(made[1]["path"]).name).unlink()
    again = cli(*args)
    assert again.exit_code == 0, again.stderr
    kept, remade = json_lines(again.stdout)
    assert (kept["status"], remade["status"]) == ("skipped", "done")
    assert {k: v for k, v in kept.items() if k != "status"} == \
        {k: v for k, v in made[0].items() if k != "status"}


def test_a_dry_runs_json_lists_the_images_the_run_would_write(tmp_path, asked):
    """It printed one plan with neither the files nor the seeds of `--n 3` (nor the prompts
    read from stdin): a script could not tell what the run would write."""
    from helpers_cli import cli

    tiny = ("--model", "tiny", "--size", "256", "--steps", "1")
    result = cli("gen", "a cat", *tiny, "--n", "3", "--seed", "7", "-o",
                 f"{tmp_path}/{{seed}}.png", "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    images = json.loads(result.stdout)["images"]
    assert [(Path(i["path"]).name, i["seed"], i["prompt"], i["seed_drawn"], i["made"])
            for i in images] == [(f"{s}.png", s, "a cat", False, False) for s in (7, 8, 9)]
    read = cli("gen", "-", *tiny, "-o", f"{tmp_path}/", "--dry-run", "--json", input="a\nb\n")
    assert read.exit_code == 0, read.stderr
    listed = json.loads(read.stdout)["images"]
    assert [i["prompt"] for i in listed] == ["a", "b"]
    assert all(i["seed_drawn"] for i in listed)  # the run draws its own
    assert asked == []


def test_n_images_count_past_the_last_seed_to_0(tmp_path):
    """The seeds wrapped at 2**63, past what the noise generator reads (2**32)."""
    runs = plan_runs(jobs(JOB.merged({"seed": 2**32 - 1}), ["a fox"]), str(tmp_path), n=2)
    assert [r.job.seed for r in runs] == [2**32 - 1, 0]


def test_several_images_go_into_a_folder_however_it_is_spelled(tmp_path, monkeypatch):
    """One image took `-o out/.` and `-o ~/pics` (a folder there) as folders, several were
    refused ("several images need -o to be a folder"); and in a template's folder
    (`-o 'out_{width}/'`) two prompts' images took one name: hires' names were not numbered."""
    from helpers_cli import cli, json_lines

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "pics").mkdir()
    tiny = ("--model", "tiny", "--size", "256", "--steps", "1", "--dry-run", "--json")
    for output, folder in ((f"{tmp_path}/new/.", tmp_path / "new"), ("~/pics", tmp_path / "pics")):
        result = cli("gen", "a fox", "--n", "2", *tiny, "-o", output)
        assert result.exit_code == 0, result.stderr
        paths = [Path(image["path"]) for image in json_lines(result.stdout)[0]["images"]]
        assert len(set(paths)) == 2 and all(p.parent == folder for p in paths), paths
    result = cli("gen", "-", *tiny, "-o", f"{tmp_path}/out_{{width}}/", input="a cat\na dog\n")
    assert result.exit_code == 0, result.stderr
    paths = [Path(image["path"]) for image in json_lines(result.stdout)[0]["images"]]
    assert len(set(paths)) == 2 and all(p.parent == tmp_path / "out_256" for p in paths), paths


def _recorded(path: Path, job: Job, stage: int | None) -> None:
    """An image at `path` that records `job`, as `stage`'s image alone or (None) the whole."""
    from hires.output import save_image
    from hires.record import save_stage

    if stage is not None:  # at the size of that stage: another is an older hires' plan's
        from hires.runs import stage_size

        save_stage(Image.new("RGB", stage_size(job, stage)), path, job, stage)
        return
    from hires import __version__
    from hires.batch import settings_hash

    save_image(Image.new("RGB", (64, 32)), path, metadata={
        "hires": __version__, "job": job.to_dict(), "result": {"settings": settings_hash(job)}})


def test_a_stage_image_of_the_job_is_not_taken_for_its_whole_image_nor_the_reverse(tmp_path):
    """A --preview's image (or a --save-stages one) where the whole image goes is not that
    image made already, and a whole image where a preview goes is not the preview."""
    one = plan_runs([JOB.merged({"seed": 5})], str(tmp_path / "x.png"))[0].job
    _recorded(tmp_path / "a.png", one, 0)
    with pytest.raises(OutputExists, match="holds this job's stage 0 image alone .* not the "
                       "whole image this run makes; pass --overwrite"):
        plan_runs([one], str(tmp_path / "a.png"))
    assert plan_runs([one], str(tmp_path / "a.png"), overwrite=True)[0].made is None
    _recorded(tmp_path / "b.stage0.png", one, None)
    with pytest.raises(OutputExists, match="holds this job's whole image, not the stage 0 "
                       "image alone"):
        plan_runs([one], str(tmp_path / "b.png"), preview=True)
    _recorded(tmp_path / "c.stage0.png", one, 0)  # the preview itself: made already
    assert plan_runs([one], str(tmp_path / "c.png"), preview=True)[0].made is not None
    _recorded(tmp_path / "d.png", one, None)
    assert plan_runs([one], str(tmp_path / "d.png"))[0].made is not None
    # --save-stages writes stage 0 at e.stage0.png: this job's whole image there is not it
    _recorded(tmp_path / "e.stage0.png", one, None)
    with pytest.raises(OutputExists, match="e.stage0.png"):
        plan_runs([one], str(tmp_path / "e.png"), stage_images=True)
    (tmp_path / "e.stage0.png").unlink()
    _recorded(tmp_path / "e.stage0.png", one, 0)  # its own stage image: written over
    assert plan_runs([one], str(tmp_path / "e.png"), stage_images=True)[0].made is None
