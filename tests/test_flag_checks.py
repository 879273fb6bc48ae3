"""Flags that would be ignored, or read otherwise than meant, are refused at the shell."""

from __future__ import annotations

import pytest
from helpers_cli import assert_usage_error, cli


@pytest.mark.parametrize(("flag", "needs"), [("--control-scale", "--control-model"),
                                             ("--ip-scale", "--ip-image")])
@pytest.mark.parametrize("command", ["plan", "gen"])
def test_an_add_on_strength_without_its_add_on_is_refused(command, flag, needs):
    """It was ignored without a word: the image came out as if the flag were not there."""
    dry = ["--dry-run"] if command == "gen" else []
    result = cli(command, "a cat", "--model", "tiny", "--size", "256", flag, "0.5", *dry)
    assert_usage_error(result, flag, needs)


def test_a_presets_add_on_strength_alone_is_a_default(tmp_path):
    """A preset may set a strength for the runs that add the add-on; alone it passes."""
    folder = tmp_path / "presets"
    folder.mkdir()
    (folder / "soft.toml").write_text("control_scale = 0.4\nip_scale = 0.3\n")
    result = cli("plan", "a cat", "--model", "tiny", "--size", "256", "--preset", "soft",
                 env={"HIRES_PRESETS": str(folder)})
    assert result.exit_code == 0, result.stderr


def test_up_scales_its_input_as_control_without_control_flag(tmp_path):
    """`hires up` conditions on its input when --control is not given: the strength is used."""
    from PIL import Image

    image = tmp_path / "in.png"
    Image.new("RGB", (128, 128), "grey").save(image)
    result = cli("up", image, "--model", "tiny", "--scale", "2", "--control-model",
                 str(tmp_path / "missing-controlnet"), "--control-scale", "0.5", "--dry-run")
    assert_usage_error(result, "missing-controlnet")  # checked past the strength
