"""Batch jobs against presets and the command's flags: a preset's format yields to a job's
output suffix (as gen's --preset to -o), and errors give advice a job file can take."""

import pytest
from helpers_cli import write

from hires.batch import name_outputs, read_batch
from hires.job import JobError


def named(tmp_path, keys: str):
    """The job of a one-job j.toml with `keys` (TOML lines), its output named under -o."""
    jobs = write(tmp_path / "j.toml", f'[[job]]\nprompt = "a"\n{keys}\n')
    items, paths = name_outputs(read_batch(jobs), tmp_path / "out", "j.toml")
    return items[0].job, paths[0]


def test_a_presets_format_yields_to_the_output_suffix(tmp_path):
    """As `hires gen p --preset print-a2 -o x.png`: a PNG, not "make them agree"."""
    job, path = named(tmp_path, 'preset = "print-a2"\noutput = "x.png"')
    assert (path.name, job.format, job.depth) == ("x.png", "png", 16)


def test_a_jobs_own_format_against_its_suffix_is_still_refused(tmp_path):
    with pytest.raises(JobError, match="'format' is tiff; make them agree"):
        named(tmp_path, 'preset = "print-a2"\noutput = "x.png"\nformat = "tiff"')
