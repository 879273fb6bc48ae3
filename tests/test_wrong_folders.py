"""A model's folder, or one of its parts', given where another kind is wanted: said as what
it is and where it goes, not as a file missing (QA 210)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers_cli import assert_usage_error, cli, error_lines
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
                       "p.safetensors is a pickle (torch.save's), not a safetensors file: name "
                       "it .bin (a run then needs --allow-pickle, if you trust it")
    import zipfile

    with zipfile.ZipFile(tmp_path / "z.safetensors", "w") as zipped:  # a download's zip
        zipped.write(lora, "l.safetensors")
    assert_usage_error(dry("--lora", tmp_path / "z.safetensors"), "z.safetensors is a zip "
                       "file, not a safetensors file; unzip it and name the LoRA file inside")
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


def test_a_models_or_vaes_folder_as_the_ip_adapter_says_what_it_is(tiny_folder, tmp_path):
    """A model's folder 'must hold one weight file (no .safetensors file)', untrue: its parts'
    folders hold five (QA 211)."""
    Image.new("RGB", (64, 64)).save(tmp_path / "face.png")
    for folder, said in ((tiny_folder, "is a whole model's folder, not an IP-Adapter: pass it "
                                       "as --model;"),
                         (tiny_folder / "vae", "is a VAE's folder, not an IP-Adapter: pass it "
                                               "as --vae;")):
        assert_usage_error(dry("--ip-image", tmp_path / "face.png", "--ip-adapter", folder),
                           f"IP-Adapter {folder} {said} give an IP-Adapter's folder or file")


def test_a_job_files_advice_names_keys_a_presets_names_flags(tiny_folder, tmp_path, tiny):
    """A batch, which has no --vae or --lora, was told to pass them (QA 211); a preset's
    advice is for gen, which has them."""
    vae = tiny_folder / "vae"
    jobs = tmp_path / "j.toml"
    jobs.write_text(f'[[job]]\nprompt = "a"\nsize = 256\nmodel = "{vae}"\n')
    result = cli("batch", jobs, "--dry-run")
    assert result.exit_code == 2 and error_lines(result.stderr) == [
        f"error: 'model' in j.toml job 0: {vae} is a VAE's folder, not a whole model (no "
        f"model_index.json); pass it as 'vae', and the model's folder ({tiny_folder}) as "
        "'model'"]
    lora = write_tiny_lora(tmp_path / "l.safetensors", tiny.pipe)
    Image.new("RGB", (64, 64)).save(tmp_path / "face.png")
    jobs.write_text(f'[[job]]\nprompt = "a"\nsize = 256\nmodel = "tiny"\nip_image = '
                    f'"{tmp_path / "face.png"}"\nip_adapter = "{lora}"\n')
    result = cli("batch", jobs, "--dry-run")
    assert result.exit_code == 2 and error_lines(result.stderr)[0].endswith(
        "it looks like a LoRA: give it with 'lora'"), result.stderr
    jobs.write_text('[[job]]\nprompt = "a"\nsize = 256\n')  # batch's own --model: its flag
    result = cli("batch", jobs, "--model", vae, "--dry-run")
    assert result.exit_code == 2 and error_lines(result.stderr) == [
        f"error: --model {vae} is a VAE's folder, not a whole model (no model_index.json); "
        f"pass it as 'vae', and the model's folder ({tiny_folder}) as 'model'"]
    preset = tmp_path / "p.toml"
    preset.write_text(f'model = "{vae}"\n')
    assert_usage_error(cli("gen", "a", "--preset", preset, "--dry-run"),
                       "pass it as --vae, and the model's folder")


def test_a_models_folder_that_holds_an_ip_adapter_is_one(tiny_folder, tmp_path, tiny):
    """A folder with model_index.json and an IP-Adapter in the Hub's layout (sdxl_models/) was
    refused as a model's by the check above (QA 212): the adapter is looked for first."""
    import shutil

    from helpers_ip import write_tiny_ip_adapter

    both = Path(shutil.copytree(tiny_folder, tmp_path / "both"))
    write_tiny_ip_adapter(both / "sdxl_models", tiny.pipe)
    Image.new("RGB", (64, 64)).save(tmp_path / "face.png")
    result = dry("--ip-image", tmp_path / "face.png", "--ip-adapter", both)
    assert result.exit_code == 0, result.stderr


def test_an_ip_adapters_folder_as_the_model_says_what_it_is(tmp_path, tiny):
    """It was told to 'give the folder that holds it': no model's folder holds one (QA 214)."""
    from helpers_ip import write_tiny_ip_adapter

    write_tiny_ip_adapter(tmp_path / "ip", tiny.pipe)
    assert_usage_error(cli("gen", "a", "--model", tmp_path / "ip", "--dry-run"),
                       f"--model {tmp_path / 'ip'} is an IP-Adapter's folder (its "
                       "image_encoder/), not a whole model (no model_index.json); pass it as "
                       "--ip-adapter, and a model as --model")
