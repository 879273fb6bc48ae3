"""A blank negative prompt is no negative prompt: the same image, and none recorded."""

import numpy as np
import pytest
from helpers_cli import cli

import hires
from hires.job import Job
from hires.output import read_metadata

ONE = {"steps": 1, "seed": 5, "size": 128}


@pytest.mark.parametrize("blank", ["  ", "\n\t "])
def test_a_blank_negative_is_none_where_the_job_is_built(blank):
    assert Job(negative=blank).validate().negative == ""
    assert Job().merged({"negative": blank}, where="jobs.toml job 0", untrusted=True
                        ).negative == ""
    assert Job(negative=" blurry ").validate().negative == " blurry "  # text kept as given


def test_the_library_makes_the_image_of_no_negative(tiny):
    blank = hires.generate("x", components=tiny, negative="  ", **ONE)
    none = hires.generate("x", components=tiny, **ONE)
    assert blank.job.negative == ""
    assert np.array_equal(np.asarray(blank.image), np.asarray(none.image))


def test_the_cli_records_no_negative(tmp_path, asked):
    out = tmp_path / "blank.png"
    result = cli("gen", "x", "--model", "tiny", "--size", "128", "--steps", "1", "--seed", "5",
                 "--negative", "  ", "-o", str(out))
    assert result.exit_code == 0, result.stderr
    meta = read_metadata(out)
    assert meta["hires"]["job"]["negative"] == ""
    assert "Negative prompt" not in meta["parameters"]
