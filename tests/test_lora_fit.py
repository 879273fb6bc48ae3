"""A LoRA for another base model is refused before the model loads (and in a dry run), from
the model's configs: its layers built on the meta device, no weights read."""

import pytest
from helpers_cli import assert_usage_error, cli
from helpers_lora import write_tiny_lora
from safetensors.torch import load_file, save_file

from hires.lora import fit_problem, model_skeleton
from hires.models import load

TINY = ("--model", "tiny", "--size", "256", "--steps", "1", "--seed", "3")


@pytest.fixture(scope="module")
def pipe():
    return load("tiny", "none", "fp32", "cpu").pipe


@pytest.fixture(scope="module")
def loras(pipe, tmp_path_factory):
    """A LoRA for the tiny model in each layout, and one twice as wide (another model's)."""
    folder = tmp_path_factory.mktemp("loras")
    files = {layout: write_tiny_lora(folder / f"{layout}.safetensors", pipe, layout=layout)
             for layout in ("kohya", "sgm", "diffusers")}
    state = load_file(files["kohya"])
    wide = {k: v if k.endswith(".alpha") else (
        v.repeat(1, 2) if "lora_down" in k else v.repeat(2, 1)) for k, v in state.items()}
    save_file(wide, folder / "wide.safetensors")
    return {**files, "wide": folder / "wide.safetensors"}


@pytest.mark.parametrize("layout", ["kohya", "sgm", "diffusers"])
def test_a_lora_for_the_model_fits_in_every_layout(loras, layout):
    assert fit_problem("x", loras[layout], "tiny") is None


def test_a_lora_for_another_model_is_said_from_the_configs(loras):
    said = fit_problem("wide.safetensors", loras["wide"], "tiny")
    assert said == ("LoRA wide.safetensors does not fit this model: down_blocks.1.attentions.0"
                    ".transformer_blocks.0.attn1.to_k is 64 -> 64 but the LoRA has 128 -> 128 "
                    "(a LoRA for another base model?)")
    # A single-file checkpoint is SDXL base: the tiny model's LoRA is no LoRA for it.
    assert "does not fit this model" in fit_problem("x", loras["kohya"], "sdxl.safetensors")


def test_a_model_whose_configs_are_not_here_is_left_to_the_load(loras, tmp_path):
    assert model_skeleton("someone/not-cached-model") is None
    assert fit_problem("x", loras["wide"], "someone/not-cached-model") is None


def test_sdxl_lora_fits_an_sdxl_checkpoint_in_its_configs(tmp_path):
    # The SDXL skeleton on the meta device: a LoRA written for its layers fits it.
    skeleton = model_skeleton("sdxl.safetensors")
    assert next(skeleton.unet.parameters()).device.type == "meta"
    file = write_tiny_lora(tmp_path / "sdxl.safetensors", skeleton, rank=1)
    assert fit_problem("sdxl", file, "sdxl.safetensors") is None


def test_the_dry_run_refuses_a_lora_for_another_model(loras):
    result = cli("gen", "a fox", *TINY, "--lora", str(loras["wide"]), "--dry-run")
    assert_usage_error(result, "does not fit this model", "attn1.to_k is 64 -> 64",
                       "(a LoRA for another base model?)")


def test_a_run_refuses_it_before_the_model_loads(loras, monkeypatch, tmp_path):
    import hires.models

    def no_load(*args, **kwargs):
        raise AssertionError("the model loaded before the LoRA was checked")

    monkeypatch.setattr(hires.models, "load_pipeline", no_load)
    result = cli("gen", "a fox", *TINY, "--lora", f"{loras['wide']}:0.5",
                 "-o", tmp_path / "out.png")
    assert_usage_error(result, "does not fit this model")
    assert not (tmp_path / "out.png").exists()
    monkeypatch.undo()  # (a dry run loads the tiny model, to see its shapes as a run does)
    ok = cli("gen", "a fox", *TINY, "--lora", str(loras["sgm"]), "--dry-run")
    assert ok.exit_code == 0, ok.stderr
