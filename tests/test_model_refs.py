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
