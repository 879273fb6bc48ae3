"""A model's folder, or one of its parts', given where another kind is wanted: said as what
it is and where it goes, not as a file missing (QA 210)."""

from __future__ import annotations

import pytest
import torch
from helpers_cli import assert_usage_error, cli
from helpers_lora import write_tiny_lora
from PIL import Image
from safetensors.torch import load_file

import hires


def dry(*args):
    return cli("gen", "a fox", "--model", "tiny", "--size", "256", "--steps", "1", *args,
               "--dry-run")


def test_a_parts_folder_as_the_model_says_what_it_is_and_where_it_goes(tiny_folder):
    for part, said in (
            ("vae", "is a VAE's folder, not a whole model (no model_index.json); pass it as "
                    f"--vae, and the model's folder ({tiny_folder}) as --model"),
            ("linfusion", "is a LinFusion checkpoint's folder, not a whole model (no "
                          "model_index.json); pass it as --linfusion, and the model's folder "
                          f"({tiny_folder}) as --model"),
            ("unet", "is a UNet's folder, not a whole model (no model_index.json); give the "
                     f"model's folder ({tiny_folder}), a .safetensors file or a Hub id")):
        result = cli("gen", "a fox", "--model", tiny_folder / part, "--dry-run")
        assert_usage_error(result, f"--model {tiny_folder / part} {said}")
    # the library names its keywords
    with pytest.raises(hires.models.ModelError, match=r"pass it as vae=, and the model's "
                       r"folder \(.*\) as model=$"):
        hires.load(str(tiny_folder / "vae"))


def test_a_vaes_folder_as_the_linfusion_checkpoint_says_so(tiny_folder):
    assert_usage_error(dry("--linfusion", tiny_folder / "vae"),
                       f"--linfusion {tiny_folder / 'vae'} is a VAE's folder, not a LinFusion "
                       "checkpoint; pass it as --vae, and give --linfusion a LinFusion folder, "
                       "or auto (the model's own) or none (plain attention)")


def test_a_models_folder_as_a_lora_or_controlnet_says_it_is_a_model(tiny_folder, tmp_path):
    Image.new("RGB", (64, 64)).save(tmp_path / "edge.png")
    assert_usage_error(dry("--lora", tiny_folder), f"LoRA {tiny_folder} is a whole model's "
                       "folder, not a LoRA; name the LoRA's .safetensors file")
    assert_usage_error(dry("--lora", tiny_folder / "vae"), "is a VAE's folder, not a LoRA")
    assert_usage_error(dry("--control", tmp_path / "edge.png", "--control-model", tiny_folder),
                       f"--control-model {tiny_folder} is a whole model's folder "
                       "(model_index.json), not a ControlNet; give a ControlNet's folder")


def test_a_pickle_named_safetensors_as_a_lora_says_what_it_is(tmp_path, tiny):
    lora = write_tiny_lora(tmp_path / "l.safetensors", tiny.pipe)
    torch.save(load_file(lora), tmp_path / "p.safetensors")  # a pickle, renamed
    assert_usage_error(dry("--lora", tmp_path / "p.safetensors"),
                       "p.safetensors is a pickle (torch.save's), not a safetensors file; name "
                       "it .bin and pass --allow-pickle if you trust it")
    (tmp_path / "notes.safetensors").write_text("{}")
    assert_usage_error(dry("--lora", tmp_path / "notes.safetensors"),
                       "notes.safetensors is not a readable safetensors file; name the LoRA's "
                       ".safetensors file")


def test_a_lora_as_the_ip_adapter_is_told_to_go_to_lora(tmp_path, tiny):
    """It was told to put an image encoder beside it, and only then that it is a LoRA."""
    lora = write_tiny_lora(tmp_path / "l.safetensors", tiny.pipe)
    Image.new("RGB", (64, 64)).save(tmp_path / "face.png")
    assert_usage_error(dry("--ip-image", tmp_path / "face.png", "--ip-adapter", lora),
                       "l.safetensors is not an IP-Adapter", "it looks like a LoRA: give it "
                       "with --lora")
