"""A batch file's seed is a whole number as the library takes it, and its errors say where in
one form: "'KEY' in FILE job N ..."."""

import re

import pytest
from helpers_cli import assert_usage_error, cli, write

from hires.batch import read_batch
from hires.job import JobError


@pytest.mark.parametrize("text,where", [
    ('[[job]]\nprompt = "x"\nseed = 1.0\n', "j.toml job 0"),
    ('[[job]]\nprompt = "x"\nseed = "5"\n', "j.toml job 0"),
    ('[defaults]\nseed = 2.0\n[[job]]\nprompt = "x"\n', "j.toml [defaults]"),
])
def test_a_seed_of_another_kind_is_refused_as_the_library_refuses_it(tmp_path, text, where):
    with pytest.raises(JobError, match=f"^'seed' in {re.escape(where)} must be a whole number"):
        read_batch(write(tmp_path / "j.toml", text))


def test_a_jsonl_seed_as_text_is_refused(tmp_path):
    with pytest.raises(JobError, match=r"^'seed' in j.jsonl job 0 \(line 1\) must be a whole"):
        read_batch(write(tmp_path / "j.jsonl", '{"prompt": "x", "seed": "7"}\n'))


def test_a_whole_seed_still_reads(tmp_path):
    (item,) = read_batch(write(tmp_path / "j.toml", '[[job]]\nprompt = "x"\nseed = 5\n'))
    assert item.job.seed == 5


@pytest.mark.parametrize("line,start", [
    ("seed = -1", "'seed' in j.toml job 0 must be between 0 and 4294967295, got -1"),
    ("seed = 4294967296", "'seed' in j.toml job 0 must be between 0 and 4294967295"),
    ("size = 100", "'size' in j.toml job 0 must be a multiple of 8, got 100"),
    ("steps = 0", "'steps' in j.toml job 0 must be a whole number from 1 to 1000"),
    ("strength = 2", "'strength' in j.toml job 0 must be between 0 and 1"),
    ("width = 512", "j.toml job 0: 'width' and 'height' go together"),
])
def test_range_errors_say_where_as_batch_s_other_errors_do(tmp_path, line, start):
    with pytest.raises(JobError) as caught:
        read_batch(write(tmp_path / "j.toml", f'[[job]]\nprompt = "x"\n{line}\n'))
    assert str(caught.value).startswith(start) and "(in " not in str(caught.value)


def test_the_cli_says_a_bad_seed_in_one_line_and_exits_2(tmp_path):
    path = write(tmp_path / "j.toml", '[[job]]\nprompt = "x"\nmodel = "tiny"\nseed = 1.0\n')
    result = cli("batch", str(path), "-o", str(tmp_path / "out") + "/", "--dry-run")
    assert_usage_error(result, "'seed' in j.toml job 0 must be a whole number")
