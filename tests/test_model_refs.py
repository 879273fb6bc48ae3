"""A `--model` or `--vae` that cannot name anything is a usage error before any loading: a
malformed Hub id, or a folder that holds no diffusers model."""

import pytest
from helpers_cli import assert_usage_error, cli


@pytest.mark.parametrize("args, words", [
    (("--model", "nope/"), ("--model nope/", "Hub id", "spelling")),
    (("--model", "tiny", "--vae", "nope/"), ("--vae nope/", "Hub id")),
    (("--model", "a model"), ("--model a model", "Hub id")),
])
def test_a_malformed_hub_id_is_a_usage_error(tmp_path, args, words):
    out = tmp_path / "x.png"
    assert_usage_error(cli("gen", "a fox", "--size", "64", *args, "-o", out), *words)
    assert not out.exists()


def test_a_folder_without_a_model_says_what_to_give(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_usage_error(cli("gen", "a fox", "--size", "64", "--model", empty, "--dry-run"),
                       "model_index.json", "give the folder")
    assert_usage_error(cli("gen", "a fox", "--size", "64", "--model", "tiny", "--vae", empty,
                           "--dry-run"), "config.json", "VAE")
    (empty / "config.json").write_text("{}")  # a VAE folder is judged by its config only here
    ok = cli("gen", "a fox", "--size", "64", "--model", "tiny", "--vae", empty, "--dry-run")
    assert ok.exit_code == 0, ok.stderr


def test_an_image_given_as_weights_is_not_called_a_pickle(tmp_path):
    """A PNG as --model, --vae, --control-model or --ip-adapter was 'a pickle checkpoint ...
    pass --allow-pickle', advice that then failed too."""
    from PIL import Image

    image = tmp_path / "photo.png"
    Image.new("RGB", (64, 64)).save(image)
    out = tmp_path / "x.png"
    for args, what in [(("--model", image), "an SDXL model"),
                       (("--model", "tiny", "--vae", image), "a VAE"),
                       (("--model", "tiny", "--control", image, "--control-model", image),
                        "a ControlNet"),
                       (("--model", "tiny", "--ip-image", image, "--ip-adapter", image),
                        "an IP-Adapter")]:
        result = cli("gen", "a fox", "--size", "256", "--steps", "1", *args, "-o", out)
        assert_usage_error(result, f"photo.png is not {what}'s weights: give a .safetensors")
        assert "stage 0" not in result.stderr  # before any planning or loading
        assert "pickle" not in result.stderr and not out.exists()
