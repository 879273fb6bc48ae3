"""An upscale's size at its limits: a scale or dpi too large to compute a size from is refused
with the range that works (it crashed with OverflowError), and --width/--height, like every
other way of sizing `hires up`, never make an image smaller than its input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers_cli import assert_usage_error, cli
from PIL import Image

from hires.job import JobError
from hires.sizes import print_pixels, target_size

RANGE = ("makes sides of over 1,000,000,000 px from the 128x96 input, more than the 32768 px a "
         "side hires makes; use --scale 256 or less")


@pytest.fixture(scope="module")
def rgb(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("up_limits") / "rgb.png"
    Image.new("RGB", (128, 96), (200, 100, 50)).save(path)
    return path


def _one_error(result) -> str:
    assert_usage_error(result)
    return result.stderr.strip()


@pytest.mark.parametrize("scale", ["1e308", "1e300", "1e20"])
def test_a_huge_scale_gets_the_range_not_an_overflow(rgb: Path, scale: str) -> None:
    # 1e308 x 128 is infinite, which round() cannot take; the digits of 1e20 x 128 say no more
    result = cli("up", rgb, "--model", "tiny", "--scale", scale, "-q", "--dry-run")
    assert _one_error(result) == f"error: --scale {float(scale):g} {RANGE}"


def test_a_batch_jobs_huge_scale_gets_the_range_in_its_keys(rgb: Path, tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"image": str(rgb), "scale": 1e308}) + "\n", encoding="utf-8")
    message = _one_error(cli("batch", jobs, "--model", "tiny", "-q", "--dry-run"))
    assert message.endswith(": scale = 1e+308 makes sides of over 1,000,000,000 px from the "
                            "128x96 input, more than the 32768 px a side hires makes; use "
                            "scale = 256 or less"), message


@pytest.mark.parametrize("dpi, said", [("inf", "--dpi must be a finite number, got inf"),
                                       ("nan", "--dpi must be a finite number, got nan"),
                                       ("1e308", "--dpi must be from 1 to 10000 pixels per "
                                                 "inch, got 1e+308")])
def test_a_print_at_a_dpi_past_its_range_names_the_dpi(rgb: Path, dpi: str, said: str) -> None:
    # the print's pixels at such a dpi overflow: the dpi's own check comes first
    for command in (["up", rgb, "--model", "tiny"], ["gen", "a fox", "--model", "tiny"]):
        result = cli(*command, "--print-size", "10x10cm", "--dpi", dpi, "-q", "--dry-run")
        assert _one_error(result) == f"error: {said}", command


def test_the_library_sizes_refuse_what_they_cannot_compute() -> None:
    with pytest.raises(JobError, match=r"^--scale 1e\+308 makes sides of over .* use --scale "
                                       r"256 or less$"):
        target_size((128, 96), scale=1e308)
    for dpi in (float("inf"), float("nan"), 1e308):
        with pytest.raises(JobError, match="^dpi must be from 1 to 10000 pixels per inch"):
            print_pixels("10x10cm", dpi, (128, 96))


@pytest.mark.parametrize("width, height, said", [
    (64, 64, "--width 64 and --height 64 make 64x64, smaller than the 128x96 input; ask for "
             "--width 128 or more and --height 96 or more"),
    (64, 256, "--width 64 makes 64x256, smaller than the 128x96 input; ask for --width 128 or "
              "more"),
    (256, 64, "--height 64 makes 256x64, smaller than the 128x96 input; ask for --height 96 or "
              "more"),
])
def test_width_and_height_smaller_than_the_input_are_refused_as_size_is(
        rgb: Path, width: int, height: int, said: str) -> None:
    result = cli("up", rgb, "--model", "tiny", "--width", width, "--height", height, "-q",
                 "--dry-run")
    assert _one_error(result) == f"error: hires up makes images larger: {said}"
    with pytest.raises(JobError, match=f"^hires up makes images larger: {said}$"):
        target_size((128, 96), width=width, height=height)  # the library's upscale's check


def test_a_batch_jobs_small_width_is_refused_in_its_keys_and_a_new_shape_is_not(
        rgb: Path, tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(f'[[job]]\nimage = "{rgb.as_posix()}"\nwidth = 64\nheight = 256\n',
                    encoding="utf-8")
    message = _one_error(cli("batch", jobs, "--model", "tiny", "-q", "--dry-run"))
    assert message.endswith(": hires up makes images larger: width = 64 makes 64x256, smaller "
                            "than the 128x96 input; ask for width = 128 or more"), message
    # Both sides given are the documented way to another shape (README, `layered_size`): a
    # stretch that is no smaller on either side still runs.
    result = cli("up", rgb, "--model", "tiny", "--width", "256", "--height", "256", "--json",
                 "--dry-run")
    assert result.exit_code == 0, result.stderr
    plan = json.loads(result.stdout)
    assert (plan["width"], plan["height"]) == (256, 256)


def test_a_side_the_grid_rounds_to_nothing_is_said_as_a_pixel() -> None:
    """4000x16 at --size 128: "makes 128x0" (found by QA)."""
    with pytest.raises(JobError, match=r"^hires up makes images larger: --size 128 makes "
                                       r"128x1, smaller than the 4000x16 input; ask for --size "):
        target_size((4000, 16), size=128)
