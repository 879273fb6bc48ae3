"""The library API's guards from a QA pass: a plan made for another job, an MPS device this torch
lacks, a negative cosine scale, a non-bool switch, an aspect of 0, and a checkpoint that cannot
be written are refused before any work, in the library's keywords."""

import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

import hires
from hires.job import Job, JobError
from hires.model_refs import ModelError
from hires.output import OutputError, OutputExists, OutputUnwritable, OutputUsage
from hires.pipeline import plan_for

ONE = {"steps": 1, "seed": 3}


@pytest.fixture(scope="module")
def made(tiny):
    return hires.generate("x", components=tiny, size=64, **ONE)


def no_work(events: list) -> bool:
    """Whether a run's progress events show no stage was started."""
    return not any(e.phase in ("denoise", "vae-encode", "vae-decode") for e in events)


# 1. a plan must make the job it runs with (only its strategies may differ)

@pytest.mark.parametrize("planned,called,words", [
    ({"width": 128, "height": 128}, {"size": 256}, "it makes 128x128, the job 256x256"),
    ({"width": 128, "height": 128}, {"size": 128, "steps": 2},
     "it has steps 1 at stage 0, where the job has 2"),
    ({"width": 512, "height": 512}, {"size": 512, "strength": 0.5},
     "it has strength 0.32 at stage 1, where the job has 0.5"),
    ({"width": 512, "height": 512}, {"size": 512, "upsample": "latent"},
     "it has upsampling pixel at stage 1, where the job has latent"),
])
def test_a_plan_for_another_job_is_refused_before_any_work(tiny, planned, called, words):
    plan = plan_for(Job(prompt="x", model="tiny", steps=1, **planned), tiny)
    events: list = []
    with pytest.raises(JobError, match=f"plan is not this job's: {words}; make it with "
                                       r"hires.pipeline.plan_for\(job, components\)"):
        hires.generate("x", components=tiny, plan=plan, progress=events.append,
                       **{**ONE, **called})
    assert no_work(events)


def test_a_preview_plan_runs_its_jobs_first_stage_and_saves_as_it(tiny, tmp_path):
    from hires.output import job_values_from_image
    from hires.plan import preview_of

    plan = preview_of(plan_for(Job(prompt="x", model="tiny", width=512, height=512, steps=1),
                               tiny))
    result = hires.generate("x", components=tiny, plan=plan, size=512, **ONE)
    assert result.image.size == (256, 256)
    record = result.save(tmp_path / "p.png")
    assert record["stage"] == 0 and job_values_from_image(tmp_path / "p.png")["width"] == 512
    with pytest.raises(JobError, match="it has steps 1 at stage 0, where the job has 2"):
        hires.generate("x", components=tiny, plan=plan, size=512, **{**ONE, "steps": 2})


def test_an_upscale_with_another_jobs_plan_is_refused(tiny, small):
    plan = plan_for(Job(prompt="", model="tiny", width=128, height=128, steps=1,
                        image=str(small)), tiny, source=(96, 64))
    with pytest.raises(JobError, match="plan is not this job's: it makes 128x128, the job "
                                       "192x128"):
        hires.upscale(small, scale=2, components=tiny, plan=plan, **ONE)


def test_a_plan_with_other_strategies_runs_and_other_steps_do_not(tiny):
    plan = plan_for(Job(prompt="x", model="tiny", width=64, height=64, steps=1), tiny)
    lean = replace(plan, stages=tuple(replace(s, strategy=replace(s.strategy, split_cfg=True))
                                      for s in plan.stages))
    result = hires.generate("x", components=tiny, plan=lean, size=64, **ONE)
    assert result.image.size == (64, 64) and result.plan is lean
    with pytest.raises(JobError, match="it has steps 1 at stage 0, where the job has 3"):
        hires.generate("x", components=tiny, plan=lean, size=64, **{**ONE, "steps": 3})


# 2. an MPS device this torch cannot use is a ModelError at load, as CUDA's is

def test_mps_without_mps_is_refused_at_load(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    words = r"this machine's torch has no Apple GPU \(MPS\) support; use device=auto or cpu"
    with pytest.raises(ModelError, match=words):
        hires.load("tiny", device="mps")
    with pytest.raises(ModelError, match=words):
        hires.generate("x", model="tiny", device="mps", size=64, **ONE)


# 3. a negative cosine scale is a usage error (it overflowed: "the weights are broken")

@pytest.mark.parametrize("name", ["cosine_scale_1", "cosine_scale_2", "cosine_scale_3"])
def test_a_negative_cosine_scale_is_refused(tiny, name):
    with pytest.raises(JobError, match=f"^{name} must be 0 or more \\(DemoFusion's are 1 to 3\\), "
                                       "got -50.0$"):
        hires.generate("x", components=tiny, size=64, **{name: -50}, **ONE)
    with pytest.raises(JobError, match=f"{name} must be 0 or more"):
        Job.from_dict({name: -50}).validate()
    assert Job(**{name: 0.0}).validate()  # 0 holds its weight at 1: allowed


# 4. a switch is True or False: "no" is truthy

def test_save_refuses_a_non_bool_overwrite_and_keeps_the_file(made, tmp_path):
    kept = tmp_path / "keep.png"
    kept.write_bytes(b"mine")
    with pytest.raises(TypeError, match="overwrite must be True or False, got 'no'"):
        made.save(kept, overwrite="no")
    assert kept.read_bytes() == b"mine"
    with pytest.raises(TypeError, match="save_stages must be True or False, got 1"):
        made.save(tmp_path / "b.png", save_stages=1)


def test_save_stages_must_be_a_bool(tiny, small):
    with pytest.raises(TypeError, match="save_stages must be True or False, got 'yes'"):
        hires.generate("x", components=tiny, size=64, save_stages="yes", **ONE)
    with pytest.raises(TypeError, match="save_stages must be True or False, got 'no'"):
        hires.upscale(small, scale=2, components=tiny, save_stages="no", **ONE)


def test_a_switch_of_none_is_not_given(made, tiny, tmp_path):
    """`save_stages=None` and `save(overwrite=None)` were TypeErrors, where README says None
    for any setting is not given: a script passing an unset option through broke (QA 193)."""
    kept = tmp_path / "keep.png"
    kept.write_bytes(b"mine")
    with pytest.raises(OutputExists):  # None is not True: the file is kept
        made.save(kept, overwrite=None)
    assert kept.read_bytes() == b"mine"
    made.save(tmp_path / "b.png", overwrite=None, save_stages=None)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("b.")] == ["b.png"]
    assert hires.generate("x", components=tiny, size=64, save_stages=None,
                          **ONE).stage_images == []


@pytest.mark.parametrize("name,value", [("karras", "no"), ("dilate_downsamplers", 1)])
def test_a_job_switch_must_be_a_bool(tiny, name, value):
    with pytest.raises(JobError, match=f"{name} must be True or False, got {value!r}"):
        hires.generate("x", components=tiny, size=64, **{name: value}, **ONE)


# 5. aspect 0 (or "") is refused as "0" is, not taken as a square

@pytest.mark.parametrize("aspect,said", [(0, "0"), (0.0, "0"), (-1.5, "-1.5"), ("", "''")])
def test_an_aspect_of_zero_is_refused(tiny, aspect, said):
    """A number is said as the number given (it said '0', as if text)."""
    with pytest.raises(JobError, match=re.escape(
            f"aspect must look like 16:9 or 1.5 (above 0), got {said}")):
        hires.generate("x", components=tiny, size=256, aspect=aspect, **ONE)


# 6. a checkpoint that cannot be written is refused before any work; save says keywords

def test_an_unwritable_checkpoint_is_refused_before_any_work(tiny, tmp_path):
    blocker = tmp_path / "a.png"
    blocker.write_bytes(b"mine")
    events: list = []
    with pytest.raises(OutputUnwritable, match="checkpoint='.*a.png/x.safetensors': cannot "
                                               "write under .*: it is a file; give another path"):
        hires.generate("x", components=tiny, size=64, checkpoint=blocker / "x.safetensors",
                       progress=events.append, **ONE)
    assert no_work(events)
    with pytest.raises(OutputUnwritable, match="checkpoint='.' is a folder: give a file's path"):
        hires.generate("x", components=tiny, size=64, checkpoint=".", **ONE)
    assert blocker.read_bytes() == b"mine"
    # folders that cannot be made (os.access says yes to root under /proc)
    with pytest.raises(OutputUnwritable, match="cannot make the folder /proc/hires-new: .*; give "
                                               "another path"):
        hires.generate("x", components=tiny, size=64, checkpoint="/proc/hires-new/x.ck",
                       progress=events.append, **ONE)
    assert no_work(events)


def test_a_checkpoint_of_hires_is_taken_and_another_file_is_not(tiny, tmp_path):
    kept = tmp_path / "out.png.resume.safetensors"
    hires.generate("x", components=tiny, size=64, checkpoint=kept, **ONE)
    assert kept.is_file()
    hires.generate("x", components=tiny, size=64, checkpoint=kept, **ONE)  # goes on from it
    image = tmp_path / "out.png"
    image.write_bytes(b"mine")
    with pytest.raises(OutputUsage, match="checkpoint='.*out.png' is a file but not a "
                                          "hires checkpoint, which the run would write over"):
        hires.generate("x", components=tiny, size=64, checkpoint=image, **ONE)
    assert image.read_bytes() == b"mine"


def test_save_errors_name_no_flags(made):
    with pytest.raises(OutputError) as e:
        made.save("x" * 300 + ".png")
    assert "choose a shorter path" in str(e.value) and "-o" not in str(e.value)
    if Path("/dev/null").exists():
        with pytest.raises(OutputError) as e:
            made.save("/dev/null")
        assert "-o" not in str(e.value)


@pytest.mark.parametrize("key", ["model", "vae", "linfusion"])
def test_a_path_object_that_is_not_there_is_said_so_not_sought_on_the_hub(tmp_path, key):
    """hires.load(model=Path('models/sdxl')) with the folder missing said "model 'models/sdxl'
    is not in the local cache" (read as a Hub id); a path object names a local file."""
    missing = tmp_path / "models" / "sdxl"
    said = f"^{key}={re.escape(repr(str(missing)))}: no such file or folder; give"
    with pytest.raises(ModelError, match=said):
        hires.load(**{key: missing})
    events: list = []
    with pytest.raises(ModelError, match=said):
        hires.generate("x", size=64, progress=events.append, **{key: missing}, **ONE)
    with pytest.raises(ModelError, match=said):  # a Job's own field, as a keyword's
        hires.generate(Job(prompt="x", **{key: missing}), size=64, progress=events.append,
                       **ONE)
    assert no_work(events)


def test_a_plan_that_cannot_fit_says_the_size_that_would_as_the_cli_does(tiny):
    """The CLI's error ends "; 768x768 fits"; the library's PlanError said only what ran
    short, so a script had no size to fall back to."""
    from hires.plan import PlanError

    with pytest.raises(PlanError, match=r"; (\d+)x\1 fits \(width=\1, height=\1\)"
                       r"(; or a larger \w+=)?$") as caught:
        hires.generate("x", components=tiny, size=2048, ram=1.3, **ONE)
    fits = int(caught.value.args[0].rsplit("width=", 1)[1].split(",")[0])
    assert 64 <= fits < 2048
    hires.generate("x", components=tiny, size=fits, ram=1.3, **ONE)  # and it does fit


@pytest.mark.parametrize("gpu", [350, 350.0, "350", "4090"])
def test_plan_for_takes_a_gpu_as_a_name_or_a_tflops_number(gpu, tiny):
    plan = plan_for(Job(prompt="x", width=512, height=512), tiny, gpu=gpu)
    assert plan.stages and plan.seconds > 0


@pytest.mark.parametrize("args, error, words", [
    (({"width": 512}, "tiny"), TypeError, "job must be a hires.Job"),
    ((Job(), "tiny components"), TypeError, "components must be what hires.load"),
    ((Job(), None, True), TypeError, "gpu must be a card's name"),
    ((Job(), None, "rtx9999"), ValueError, "unknown GPU 'rtx9999'"),
])
def test_plan_for_refuses_arguments_of_the_wrong_kind_in_keywords(args, error, words, tiny):
    job, components, *gpu = args
    with pytest.raises(error, match=re.escape(words)) as caught:
        plan_for(job, tiny if components is None else components, gpu=gpu[0] if gpu else None)
    assert "--" not in str(caught.value)  # 'vram', not '--vram'


@pytest.mark.parametrize("values", [None, ["prompt"], "prompt = 'x'"])
def test_job_from_dict_takes_only_a_dict(values):
    with pytest.raises(TypeError, match="Job.from_dict takes a dict of job keys"):
        Job.from_dict(values)


def test_plan_for_says_a_huge_gpu_figure_briefly(tiny):
    with pytest.raises(ValueError, match="gpu inf is not a card") as caught:
        plan_for(Job(), tiny, gpu=10**400)
    assert len(str(caught.value)) < 300


# 7. an unknown keyword is said as a keyword; hires.load takes the rest by keyword

def test_an_unknown_keyword_is_said_as_a_keyword(tiny):
    """It said "unknown key stesp (did you mean 'steps'?)", a batch file's words."""
    for given, said in ((dict(stesp=2), "unknown keyword stesp= (did you mean steps=?)"),
                        (dict(negative_prompt="x"),
                         "unknown keyword negative_prompt= (did you mean negative=?)"),
                        (dict(zzzq=1), "unknown keyword zzzq= (valid: job, components, "
                                       "progress, save_stages,")):
        with pytest.raises(JobError, match=re.escape(said)):
            hires.generate("x", components=tiny, size=64, **given, **ONE)


def test_load_takes_the_model_by_position_and_the_rest_by_keyword():
    """`hires.load("tiny", "cpu")` loaded "cpu" as the LinFusion checkpoint, and a misspelt
    keyword was Python's bare "unexpected keyword argument"."""
    with pytest.raises(TypeError, match=re.escape(
            "load() takes the model by position and the rest by keyword (linfusion=..., "
            "device=...): got 2 positional arguments")):
        hires.load("tiny", "cpu")
    with pytest.raises(TypeError, match=re.escape(
            "load() got an unknown keyword modle= (did you mean model=?)")):
        hires.load(modle="tiny")
    with pytest.raises(TypeError, match=re.escape("load() got an unknown keyword zzz= (valid: "
                                                  "model, linfusion, dtype, device,")):
        hires.load("tiny", zzz=1)


@pytest.mark.parametrize("key", ["lora", "steps", "vram", "size", "save_stages",
                                 "checkpoint"])
def test_load_tells_an_images_setting_where_it_goes(key):
    """`hires.load("tiny", lora=...)` was asked 'did you mean offload=?': a setting of each
    image is generate's (or upscale's), whatever load's keyword is spelt like it."""
    with pytest.raises(TypeError, match=re.escape(
            f"load() got {key}=, a setting of each image, not of the model: pass it to "
            f"hires.generate(..., {key}=...) or hires.upscale, with "
            "components=hires.load(...)")):
        hires.load("tiny", **{key: 1})


def test_load_tells_an_upscales_setting_and_the_components_where_they_go():
    """load(scale=2) was sent to generate, which refuses scale= as upscale's; components= was
    told to pass components=hires.load(...) (QA 212)."""
    for key in ("scale", "on_score"):
        with pytest.raises(TypeError, match=re.escape(
                f"load() got {key}=, a setting of each upscale, not of the model: pass it to "
                f"hires.upscale(image, {key}=...)")):
            hires.load("tiny", **{key: 2})
    with pytest.raises(TypeError, match=re.escape("load() got components=: load makes the "
                                                  "components")):
        hires.load("tiny", components=1)
    # misspelt, each is said as what it was meant to be, not as a load keyword (QA 214)
    for key, said in (("lroa", "lroa= (lora=?), a setting of each image"),
                      ("sacle", "sacle= (scale=?), a setting of each upscale"),
                      ("componets", "componets= (components=?): load makes the components")):
        with pytest.raises(TypeError, match=re.escape(f"load() got {said}")):
            hires.load("tiny", **{key: 1})


def test_an_unknown_keyword_is_matched_against_every_keyword_of_the_call(tiny, tmp_path):
    """Only Job's fields were candidates: `sise=` was told 'seed', `componets=` 'prompt';
    and an upscale's `scael=` was said to be a missing size (found by QA)."""
    from PIL import Image

    photo = tmp_path / "p.png"
    Image.new("RGB", (64, 48)).save(photo)
    for call, said in (
            (lambda: hires.generate("x", components=tiny, sise=128), "sise= (did you mean size=?)"),
            (lambda: hires.generate("x", componets=tiny), "componets= (did you mean components=?)"),
            (lambda: hires.generate("x", components=tiny, save_stage=True),
             "save_stage= (did you mean save_stages=?)"),
            (lambda: hires.upscale(str(photo), components=tiny, scael=2),
             "scael= (did you mean scale=?)"),
            (lambda: hires.upscale(imag=str(photo), components=tiny),
             "imag= (did you mean image=?)"),
            (lambda: hires.upscale(str(photo), components=tiny, on_scor=print),
             "on_scor= (did you mean on_score=?)"),
            # a dashed key slipped past the checks made by name (ip-scale= ran unchecked)
            (lambda: hires.generate("x", components=tiny, **{"ip-scale": 0.5}),
             "ip-scale= (did you mean ip_scale=?)"),
            # an upscale by generate(image=...) takes upscale's keywords
            (lambda: hires.generate(image=str(photo), components=tiny, scael=2),
             "scael= (did you mean scale=?)"),
            # a capital is a slip, not a command's flag: it said "give one of size, scale, ..."
            (lambda: hires.upscale(str(photo), components=tiny, Scale=2),
             "Scale= (did you mean scale=?)"),
            # a flag gets its advice before an upscale's size is asked for
            (lambda: hires.upscale(str(photo), components=tiny, **{"dry-run": True}),
             "dry-run=: hires.pipeline.plan_for")):
        with pytest.raises(JobError, match=re.escape(f"unknown keyword {said}")):
            call()


def test_a_commands_flag_given_as_none_is_not_given(tiny):
    """A script passing its unset options through (n=None, preset=None) was refused once the
    keywords were checked first; None is not given, as for any keyword."""
    result = hires.generate("x", components=tiny, size=64, n=None, preset=None, **ONE)
    assert (result.job.width, result.job.height) == (64, 64)
    with pytest.raises(JobError, match="unknown keyword n=: each call makes one image"):
        hires.generate("x", components=tiny, size=64, n=2, **ONE)


def test_an_input_s_advice_is_the_library_s_not_the_shell_s(tiny, tmp_path):
    """A folder was told to give FOLDER/* (a glob the library does not expand: "*: no such
    file"), a changed input to run `hires up` (QA 193)."""
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "photos" / "a.png")
    with pytest.raises(ValueError, match=r"photos: is a folder, not an image file; give one of "
                       r"its image files \(a call for each\)$"):
        hires.upscale(tmp_path / "photos", scale=2, components=tiny, **ONE)
    photo = tmp_path / "m.png"
    Image.new("RGB", (64, 64), "red").save(photo)
    made = hires.upscale(photo, scale=2, components=tiny, **ONE)
    Image.new("RGB", (64, 64), "blue").save(photo)
    with pytest.raises(JobError, match=r"restore the original, or upscale the new file: "
                       r"hires.upscale\(path, \.\.\.\) without job=$"):
        hires.generate(made.job, components=tiny)


def test_load_s_signature_shows_the_model_by_position_and_the_rest_by_keyword():
    """help(hires.load) showed every parameter as positional, which load refuses (QA 193)."""
    import inspect

    params = list(inspect.signature(hires.load).parameters.values())
    assert params[0].name == "model" and params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert {p.kind for p in params[1:]} == {inspect.Parameter.KEYWORD_ONLY}
    assert "linfusion" in [p.name for p in params]


def test_a_budget_too_small_names_its_keyword(tiny):
    """The library's refusal named no keyword to change (the CLI says "try a larger --vram"),
    and none at all where no size fits (QA 208)."""
    from hires.plan import PlanError

    with pytest.raises(PlanError, match=r"; or a larger vram=$"):
        hires.generate("x", components=tiny, size=256, steps=1, seed=1, vram=0.1)
    with pytest.raises(PlanError, match=r"fits \(width=\d+, height=\d+\); or a larger ram=$"):
        hires.generate("x", components=tiny, size=2048, steps=1, seed=1, ram=1)
