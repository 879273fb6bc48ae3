"""A strength that re-noises nothing (a job of one stage, the base) is said, not ignored
without a word: a line in `result.warnings`, and so on the CLI's stderr."""

import pytest
from helpers_cli import cli

import hires
from hires.job import Job, idle_strength
from hires.plan import make_plan, preview_of


def test_one_stage_with_a_strength_of_its_own_is_said():
    (line,) = idle_strength(Job(strength=0.5), make_plan(1024, 1024, native=1024))
    assert line.startswith("strength 0.5 is ignored: a 1024x1024 job is its base stage alone")
    assert idle_strength(Job(strength=0.5), make_plan(512, 512, native=1024))


@pytest.mark.parametrize("job,plan", [
    (Job(), make_plan(1024, 1024, native=1024)),  # the default: nothing was asked
    (Job(strength=0.5), make_plan(2048, 2048, native=1024)),  # an upscale stage uses it
    (Job(strength=0.5), preview_of(make_plan(2048, 2048, native=1024))),  # the whole job does
    (Job(strength=0.5, image="in.png"), make_plan(1024, 1024, source=(512, 512))),
])
def test_a_strength_that_is_used_or_not_asked_for_is_not_said(job, plan):
    assert idle_strength(job, plan) == []


def test_the_library_says_it_in_result_warnings(tiny):
    result = hires.generate("x", components=tiny, size=128, steps=1, seed=1, strength=0.5)
    assert [w for w in result.warnings if "strength" in w] == [
        "strength 0.5 is ignored: a 128x128 job is its base stage alone, with no upscale stage "
        "to re-noise; a larger size adds them"]
    again = hires.generate("x", components=tiny, size=512, steps=1, seed=1, strength=0.5)
    assert not [w for w in again.warnings if "strength" in w]


def test_the_cli_says_it_in_one_line_and_makes_the_image(tmp_path, asked):
    out = tmp_path / "one.png"
    result = cli("gen", "x", "--model", "tiny", "--size", "256", "--steps", "1",
                 "--strength", "0.5", "-o", str(out))
    assert result.exit_code == 0, result.stderr
    assert out.is_file()
    said = [line for line in result.stderr.splitlines() if "strength 0.5" in line]
    assert said == ["warning: strength 0.5 is ignored: a 256x256 job is its base stage alone, "
                    "with no upscale stage to re-noise; a larger size adds them"]
