"""A folder where hires would write a file is refused before the work, --overwrite or not:
a rename onto a folder fails, and it failed only after the stages had run (exit 1)."""

from helpers_cli import assert_usage_error, cli

from hires import output


def test_a_folder_at_a_stage_image_is_refused_up_front_with_overwrite(tmp_path, asked):
    (tmp_path / "o.stage0.png").mkdir()
    result = cli("gen", "a cat", "--model", "tiny", "--size", "1024", "--steps", "2", "--seed",
                 "3", "--save-stages", "--overwrite", "-o", tmp_path / "o.png")
    assert_usage_error(result, "o.stage0.png is a folder", "choose another -o")
    assert asked == []  # before the model loads, not after stage 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.stage0.png"]


def test_a_folder_at_the_default_name_is_refused_up_front_with_overwrite(tmp_path, asked):
    taken = tmp_path / output.default_name(256, 256, 3)
    taken.mkdir()
    result = cli("gen", "a cat", "--model", "tiny", "--size", "256", "--steps", "1", "--seed",
                 "3", "--overwrite", "-o", f"{tmp_path}/")
    assert_usage_error(result, f"{taken.name} is a folder", "choose another -o")
    assert asked == []


def test_a_folder_is_not_said_to_be_overwritable(tmp_path):
    """Without --overwrite the message named --overwrite, which could not help."""
    (tmp_path / "o.png").mkdir()
    try:
        output.check_writable(tmp_path / "o.png", overwrite=False)
    except output.OutputUnwritable as e:
        assert "--overwrite" not in str(e) and "is a folder" in str(e)
    else:
        raise AssertionError("a folder at the path was taken as writable")


def test_a_link_to_a_folder_is_a_name_overwrite_replaces(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "o.png").symlink_to(tmp_path / "d")
    output.check_writable(tmp_path / "o.png", overwrite=True)  # no error
