"""Follow-ups to the library's API: what `hires.upscale` takes from a `job`, and the errors
that name what the library has."""

import importlib

import pytest
from PIL import Image

from hires.job import Job

# the module, not the package's `hires.upscale` function that shadows it
upscale_module = importlib.import_module("hires.upscale")


@pytest.fixture
def ran(monkeypatch):
    """The job `upscale` would run, caught before any model loads."""
    jobs = []

    def caught(job, **kwargs):
        jobs.append(job)
        from types import SimpleNamespace

        return SimpleNamespace(warnings=[])  # the part of a Result that upscale reads

    monkeypatch.setattr(upscale_module, "upscale_job", caught)
    return jobs


def gray(path, size: tuple[int, int]):
    Image.new("RGB", size, "gray").save(path)
    return path


@pytest.fixture
def photo(tmp_path):
    return gray(tmp_path / "g2.png", (256, 256))


@pytest.fixture
def wide(tmp_path):
    return gray(tmp_path / "wide.png", (256, 128))


def test_upscale_takes_the_jobs_prompt_and_strength(photo, ran):
    job = Job(prompt="a tabby cat", strength=0.5)
    upscale_module.upscale(photo, job=job, scale=1.5)
    assert (ran[0].prompt, ran[0].strength) == ("a tabby cat", 0.5)
    upscale_module.upscale(photo, job=job, scale=1.5, prompt="a dog", strength=0.2)
    assert (ran[1].prompt, ran[1].strength) == ("a dog", 0.2)  # keywords win
    upscale_module.upscale(photo, job=Job(), scale=1.5)
    assert (ran[2].prompt, ran[2].strength) == ("", 0.3)  # up's, not gen's 0.32
    upscale_module.upscale(photo, scale=1.5)
    assert (ran[3].prompt, ran[3].strength) == ("", 0.3)


def test_upscale_takes_the_jobs_size(photo, ran):
    upscale_module.upscale(job=Job(image=str(photo), width=768, height=512))
    assert (ran[0].width, ran[0].height) == (768, 512)
    upscale_module.upscale(job=Job(image=str(photo), width=768, height=512), scale=2)
    assert (ran[1].width, ran[1].height) == (512, 512)  # a keyword's size wins
    with pytest.raises(ValueError, match="give one of size"):  # Job's default square: unsaid
        upscale_module.upscale(job=Job(image=str(photo)))
    # A job from noise (a gen image's record): its size is what it generated, no target: it
    # ran a 1x re-noise at that size, the input's aspect lost.
    with pytest.raises(ValueError, match="give one of size"):
        upscale_module.upscale(str(photo), job=Job(width=256, height=256))


@pytest.mark.parametrize(("given", "says"), [
    (dict(n=2), "n=: each call makes one image: call it once a seed (seed=...)"),
    (dict(scale=2), "scale=: scale multiplies an input image's size: it is for "
                    "hires.upscale(image, scale=...); give size"),
    (dict(preset="draft"), "presets are for the command line and batch files; pass a preset's "
                           "settings as keywords, yours over them: "
                           "**{**hires.presets.load_preset('draft').values, 'steps': 30} "
                           "(for a size of yours, leave out the preset's size"),
    (dict(output="a.png"), "result.save(path) writes it"),
    # said "did you mean 'control_scale'?"
    (dict(on_score=print), "on_score is hires.upscale's (each stage's PSNR against the input "
                           "image)"),
])
def test_a_keyword_the_library_lacks_says_what_it_has(given, says):
    """n=2 said "pass n to gen", scale=2 "did you mean 'ip_scale'?", preset= "did you mean
    'prompt'?": nothing a Python caller can do."""
    import hires

    with pytest.raises(hires.JobError) as e:
        hires.generate("a fox", **given)
    assert says in str(e.value)
    assert "gen" not in str(e.value).replace("hires.generate", "") and "did you mean" not in str(
        e.value)


@pytest.mark.parametrize("prompt", [{}, {"prompt": None}, {"prompt": "  "},
                                    {"job": Job()}, {"job": Job(prompt="x"), "prompt": ""}])
def test_generate_without_a_prompt_is_refused_as_gen_is(prompt, tiny):
    """`hires gen ""` says "give a prompt"; generate() made an image of no prompt, unsaid (a
    script's unset prompt variable, None, is 'not given'), and so with a Job of none."""
    import hires

    with pytest.raises(hires.JobError, match=r"^give a prompt: generate\('a lighthouse"):
        hires.generate(components=tiny, size=128, steps=1, seed=1, **prompt)


def test_a_presets_settings_run_as_keywords(tiny):
    """The advice works: a shipped preset's values are the library's keywords."""
    import hires
    from hires.presets import load_preset

    result = hires.generate("a fox", components=tiny, seed=1,
                            **{**load_preset("draft").values, "size": 128, "steps": 1})
    assert (result.job.guidance, result.image.size) == (6.0, (128, 128))


@pytest.mark.parametrize("call", ["generate", "upscale"])
def test_dpi_0_with_a_print_size_is_refused_as_the_flag_is(call, photo, ran):
    """`dpi or 300` read 0 as not given: the library made a 300 dpi print of a dpi=0 call,
    which --dpi 0 refuses."""
    import hires

    with pytest.raises(hires.JobError, match="dpi must be from 1 to 10000 pixels per inch, "
                                             "got 0"):
        if call == "generate":
            hires.generate("a fox", model="tiny", print_size="A6", dpi=0)
        else:  # aspect=None is not given, as aspect left out: not 'an upscale keeps ...'
            hires.upscale(photo, model="tiny", print_size="A6", dpi=0, aspect=None)
    assert ran == []


def test_none_is_a_keyword_not_given():
    """A script passing its unset options through: steps=None failed ('must be a whole
    number') and width=None with height=None asked for a size, where size=None passed."""
    from hires.library import in_keywords, library_job

    unset = dict(steps=None, width=None, height=None, guidance=None, lora=None, seed=None)
    with in_keywords():
        plain = library_job("a fox", {"model": "tiny"})
        given = library_job("a fox", {"model": "tiny", **unset})
        kept = library_job(Job(prompt="a fox", model="tiny", seed=7, steps=3), unset)
    assert given == plain
    assert (kept.seed, kept.steps) == (7, 3)  # job='s own, as for a keyword left out


def test_a_components_mismatch_names_the_dtype_as_the_keyword_takes_it(tiny):
    """It said 'float32', which hires.load(dtype='float32') refuses."""
    import hires

    with pytest.raises(hires.JobError) as e:
        hires.generate("a fox", components=tiny, size=128, dtype="fp16")
    assert "loaded with dtype 'fp32'" in str(e.value)


def test_a_saves_warning_points_at_the_callers_line(tiny, tmp_path):
    """A JPEG of a transparent upscale warns: named at hires' own record.py, a script could
    not filter it by its module."""
    import warnings

    import hires

    clear = tmp_path / "clear.png"
    Image.new("RGBA", (64, 64), (90, 90, 200, 120)).save(clear)
    result = hires.upscale(clear, scale=2, components=tiny, seed=1, steps=1)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result.save(tmp_path / "flat.jpg")
    assert [w.filename for w in seen] == [__file__], [(w.filename, w.message) for w in seen]


@pytest.mark.parametrize(("args", "kwargs", "says"), [
    ((), dict(job="g2.png"), "job must be a hires.Job, got str; the image is the first "
                             "argument: hires.upscale(PATH, ...)"),
    (("g2.png",), dict(job="a fox"), "job must be a hires.Job, got str; a prompt is prompt=..."),
])
def test_upscales_job_is_a_job(args, kwargs, says, photo, ran, monkeypatch):
    """An image given as job= was said to be 'NoneType; save an in-memory image to a file',
    and a prompt as job= ran as the prompt though the signature says Job."""
    monkeypatch.chdir(photo.parent)
    with pytest.raises(TypeError) as e:
        upscale_module.upscale(*args, scale=2, model="tiny", **kwargs)
    assert str(e.value) == says
    assert ran == []


def test_an_empty_image_path_is_said_so(ran):
    """Path('') is '.': it said '.: is a folder, not an image file'."""
    from hires.images import ImageInputError

    with pytest.raises(ImageInputError, match="^image is empty: give an image file's path$"):
        upscale_module.upscale("", scale=2, model="tiny")
    assert ran == []


def test_loads_argument_of_the_wrong_kind_is_named_as_the_keyword():
    """hires.load(5) said "'model' in the job must be text": load has no job."""
    import hires

    with pytest.raises(hires.JobError, match="^model must be text, got 5$"):
        hires.load(5)
    with pytest.raises(hires.JobError, match="^dtype must be text, got 3$"):
        hires.load("tiny", dtype=3)
    with pytest.raises(hires.JobError, match="^model must be text, got 5$"):  # as generate's
        hires.generate("x", model=5)


def test_generate_with_a_job_and_an_image_is_sized_as_upscale(wide, ran):
    """generate(Job, image=...) ran a Job's way: the 256x128 input squashed to 512x512 at
    size=512, shrunk at size=128, and a 1024 square with no size at all (found by QA)."""
    import hires

    hires.generate(Job(prompt="p", steps=1), image=str(wide), size=512)
    hires.generate(Job(prompt="p", steps=1, image=str(wide)), size=512)
    assert [(j.width, j.height, j.image) for j in ran] == [(512, 256, str(wide))] * 2
    assert ran[0].prompt == "p" and ran[0].strength == 0.3  # up's strength, as upscale(job=)
    with pytest.raises(hires.JobError, match="^an upscale makes images larger: size 128 "):
        hires.generate(Job(prompt="p"), image=str(wide), size=128)
    with pytest.raises(hires.JobError, match="give one of size"):
        hires.generate(Job(prompt="p"), image=str(wide))
    # A run's recorded upscale job keeps its size, as upscale(job=) reads it; its image is
    # checked against the sha256 it recorded, as a run of the job checks it
    import hashlib

    sha = hashlib.sha256(wide.read_bytes()).hexdigest()
    hires.generate(Job(prompt="p", image=str(wide), width=768, height=384, image_sha256=sha))
    assert (ran[-1].width, ran[-1].height) == (768, 384)
    for call in (hires.generate, lambda job: hires.upscale(job=job)):
        with pytest.raises(hires.JobError, match="wide.png has changed since this job ran"):
            call(Job(prompt="p", image=str(wide), width=768, height=384, image_sha256="0" * 64))


def test_a_jobs_size_is_taken_for_its_own_image_alone(wide, photo, ran):
    """A job's width and height are its own input's upscale (or a generated image's): another
    input was squashed to them (a recorded 256x256 job's 384x384 on a 256x128 input), and a
    job from noise said only 'give one of size' though it gave one (found by QA)."""
    import hashlib
    from pathlib import Path

    import hires

    sha = hashlib.sha256(photo.read_bytes()).hexdigest()
    made = Job(prompt="p", image=str(photo), width=384, height=384, image_sha256=sha)
    with pytest.raises(hires.JobError, match="the job's 384x384 is its own input's, not this "
                       r"input's \(width=384, height=384 makes it\)"):
        hires.generate(made, image=str(wide))
    with pytest.raises(hires.JobError, match="the job's 512x512 is a generated image's"):
        hires.generate(Job(prompt="p", width=512, height=512), image=str(wide))
    hires.generate(made, image=str(wide), size=512)  # a size given: this input's aspect
    hires.generate(made, image=str(photo))  # its own image, named: its own size
    hires.generate(Job(**{**made.to_dict(), "image": Path(str(photo))}))  # a Path too
    assert [(j.width, j.height) for j in ran] == [(512, 256), (384, 384), (384, 384)]
    piped = Job(prompt="p", image=Path("-"), width=384, height=384)  # `hires up -`'s record
    with pytest.raises(hires.JobError, match=r"^this job's image came on stdin \('-'\); give "
                       r"its file: dataclasses.replace\(job, image='photo.png'\)$"):
        hires.generate(piped)


def test_generate_with_a_job_and_an_image_takes_on_score_and_scale(wide, ran):
    """Refused as 'hires.generate(..., image=...) upscales and takes it too', which it was."""
    import hires

    hires.generate(Job(prompt="p"), image=str(wide), size=512, on_score=lambda i, p: None)
    hires.generate(Job(prompt="p"), image=str(wide), scale=2)
    assert [(j.width, j.height) for j in ran] == [(512, 256)] * 2


def test_an_empty_checkpoint_is_an_output_error():
    """README: a checkpoint path at fault is an OutputUsage; "" was a plain ValueError."""
    import hires
    from hires.output import OutputUsage

    with pytest.raises(OutputUsage, match="checkpoint is empty"):
        hires.generate("p", checkpoint="")
