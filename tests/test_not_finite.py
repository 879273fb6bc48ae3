"""A model or VAE whose output holds NaN or inf (an fp16 overflow) stops the run with what to
change, instead of saving a black image; a single-file VAE may be asked to run in fp16."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch
from helpers_cli import cli, error_lines

import hires
import hires.pipeline
from hires import vae as tiled_vae
from hires.errors import NotFinite

JOB = dict(prompt="a fox", width=256, height=256, steps=2, seed=1)


@pytest.fixture(scope="module")
def own():
    """A tiny model of this module's own, whose weights the tests break and mend."""
    return hires.load("tiny")


@contextmanager
def broken(parameter: torch.Tensor, value: float = float("nan")):
    kept = parameter.data.clone()
    parameter.data.view(-1)[0] = value
    try:
        yield
    finally:
        parameter.data.copy_(kept)


def test_the_tiled_vae_says_nan_rather_than_quantizing_it_to_black(own):
    vae = own.vae
    latents = torch.randn(1, 4, 40, 40)
    pixels = tiled_vae.decode(vae, latents, tile=128)  # tiled: 320 px in 128 px tiles
    assert pixels.any()
    with broken(vae.decoder.conv_out.bias), pytest.raises(NotFinite, match="NaN or inf"):
        tiled_vae.decode(vae, latents, tile=128)
    with broken(vae.decoder.conv_out.bias, float("inf")), pytest.raises(NotFinite):
        tiled_vae.decode(vae, latents, tile=512)  # one plain pass
    image = np.zeros((128, 128, 3), np.uint8)
    with broken(vae.encoder.conv_out.bias), pytest.raises(NotFinite, match="encoder"):
        tiled_vae.encode(vae, image, tile=512)


def test_a_model_that_overflows_stops_after_its_stage_with_what_to_change(own):
    with broken(own.unet.conv_out.bias), pytest.raises(NotFinite) as said:
        hires.generate(components=own, **JOB)
    message = str(said.value)
    assert "stage 0's denoising gave NaN or inf (the model ran in fp32): not saved" in message
    assert "the model's weights are likely broken" in message  # fp32 asks for no fp32
    from hires.pipeline import _precision_advice

    # never the precision that just failed: it repeated '--vae-dtype fp32' after fp32
    assert _precision_advice(torch.bfloat16, "--dtype", "the model") == \
        "load the model with --dtype fp32"
    assert _precision_advice(torch.float16, "--vae-dtype", "the VAE") == \
        "load the VAE with --vae-dtype bf16 or fp32"


def test_a_vae_that_overflows_in_fp16_is_told_to_run_in_bf16(own, monkeypatch):
    monkeypatch.setattr(own, "vae_dtype", torch.float16)  # as a run with --vae-dtype fp16
    with broken(own.vae.decoder.conv_out.bias), pytest.raises(NotFinite) as said:
        hires.generate(components=own, **JOB)
    assert "the VAE's output holds NaN or inf" in str(said.value)
    assert "load the VAE with vae_dtype=bf16 or fp32" in str(said.value)


def test_the_cli_exits_1_with_one_line_and_writes_nothing(own, monkeypatch, tmp_path):
    monkeypatch.setattr(hires.pipeline, "load", lambda *a, **k: own)
    out = tmp_path / "fox.png"
    with broken(own.vae.decoder.conv_out.bias):
        result = cli("gen", "a fox", "--model", "tiny", "--size", "256", "--steps", "2", "-q",
                     "-o", out)
    assert result.exit_code == 1, (result.stdout, result.stderr)
    said = error_lines(result.stderr)
    assert len(said) == 1 and said[0] == result.stderr.strip().splitlines()[-1]
    assert "NaN or inf" in said[0] and "HIRES_DEBUG" not in said[0]
    assert ": not saved, the image would be black" in said[0]  # it said 'saved'
    # its dtype on this CPU: bf16 where it has fast bf16, else fp32 (none wider to try)
    assert "load the VAE with --vae-dtype fp32" in said[0] or "weights are likely broken" \
        in said[0]
    # The denoised stage is kept (a run with the VAE mended only decodes it); no image.
    assert [p.name for p in tmp_path.iterdir()] == ["fox.png.resume.safetensors"]


def test_a_single_file_vae_may_run_in_fp16(tiny_folder, tmp_path, monkeypatch):
    """It was refused ('its fp16 safety cannot be read'): an fp16-fix VAE as one file had no
    way to run in fp16. An overflow now stops the run instead (the tests above)."""
    vae = tiny_folder / "vae" / "diffusion_pytorch_model.safetensors"
    made = cli("gen", "a fox", "--model", "tiny", "--vae", vae, "--vae-dtype", "fp16",
               "--size", "128", "--steps", "1", "-q", "-o", tmp_path / "x.png")
    assert made.exit_code == 0, made.stderr
    assert (tmp_path / "x.png").is_file()
    loaded = hires.models.load("tiny", device="cpu", vae=str(vae), vae_dtype="fp16")
    assert loaded.vae_dtype == torch.float16
