"""-q is taken by every command: a wrapper that adds it to each call broke on plan, info and
presets ("no such option: -q", found by QA)."""

import pytest
from helpers_cli import cli


@pytest.mark.parametrize("args", [("plan", "x", "--size", "1024"), ("info",), ("presets",),
                                  ("presets", "list"), ("presets", "show", "16k"),
                                  ("presets", "-q", "show", "16k")])
def test_every_command_takes_q_and_keeps_stderr_free_of_logs(args):
    loud = cli(*args)
    quiet = cli(*args, "-q") if "-q" not in args else cli(*args)
    assert quiet.exit_code == 0 and loud.exit_code == 0, quiet.stderr
    # the same output (info's free memory and disk change between calls)
    assert quiet.stdout == loud.stdout if args[0] != "info" else quiet.stdout.strip()
    assert quiet.stderr == ""


def test_presets_without_q_still_say_where_your_own_go():
    assert "(your own presets go in " in cli("presets").stderr
