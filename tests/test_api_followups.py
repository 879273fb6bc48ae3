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
        return job

    monkeypatch.setattr(upscale_module, "upscale_job", caught)
    return jobs


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "g2.png"
    Image.new("RGB", (256, 256), "gray").save(path)
    return path


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
                           "settings as keywords: **hires.presets.load_preset('draft').values"),
    (dict(output="a.png"), "result.save(path) writes it"),
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


def test_a_presets_settings_run_as_keywords(tiny):
    """The advice works: a shipped preset's values are the library's keywords."""
    import hires
    from hires.presets import load_preset

    result = hires.generate("a fox", components=tiny, seed=1,
                            **{**load_preset("draft").values, "size": 128, "steps": 1})
    assert (result.job.guidance, result.image.size) == (6.0, (128, 128))
