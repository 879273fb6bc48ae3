"""`--vae`: a VAE instead of the model's, from a folder, a pipeline, a single file (either key
layout) or the Hub cache; and fp16 for a VAE made for it."""

import json
import re

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from helpers_cli import assert_usage_error, cli
from PIL import Image
from safetensors.torch import save_file

from hires.batch import settings_hash
from hires.job import Job
from hires.model_refs import ModelError
from hires.models import load
from hires.output import read_metadata
from hires.sdxl import SDXL_VAE_CONFIG
from hires.tiny import tiny_vae

TINY = ("--model", "tiny", "--size", "256", "--steps", "2", "--seed", "4", "-q")


def ldm_state_dict(vae) -> dict:
    """A diffusers AutoencoderKL's weights under the original (LDM) key names, as single-file
    SDXL VAEs ship them."""
    ups = len(vae.config.block_out_channels)
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for key, value in vae.state_dict().items():
        new = key.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        new = re.sub(r"down_blocks\.(\d+)\.resnets\.", r"down.\1.block.", new)
        new = re.sub(r"down_blocks\.(\d+)\.downsamplers\.0\.", r"down.\1.downsample.", new)
        new = re.sub(r"up_blocks\.(\d+)\.resnets\.", lambda m: f"up.{ups - 1 - int(m[1])}.block.",
                     new)
        new = re.sub(r"up_blocks\.(\d+)\.upsamplers\.0\.",
                     lambda m: f"up.{ups - 1 - int(m[1])}.upsample.", new)
        new = re.sub(r"mid_block\.resnets\.(\d)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", new)
        m = re.match(r"(.*)mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.*)",
                     new)
        if m:
            new = f"{m[1]}mid.attn_1.{attn[m[2]]}.{m[3]}"
            value = value[:, :, None, None] if value.ndim == 2 else value  # 1x1 convs there
        out[new] = value.contiguous()
    return out


@pytest.fixture(scope="module")
def other_vae():
    return tiny_vae(seed=5, trained=False)  # not the model's (trained) VAE


@pytest.fixture(scope="module")
def vae_folder(other_vae, tmp_path_factory):
    folder = tmp_path_factory.mktemp("vae") / "other-vae"
    other_vae.save_pretrained(folder)
    return folder


def same_weights(a, b) -> bool:
    theirs = b.state_dict()
    return all(torch.equal(v, theirs[k]) for k, v in a.state_dict().items())


def test_every_form_of_a_vae_replaces_the_models(other_vae, vae_folder, tmp_path):
    pipeline = tmp_path / "pipeline"
    swapped = load("tiny", "none", "fp32", "cpu", vae_dtype="fp32", vae=str(vae_folder))
    swapped.pipe.save_pretrained(pipeline)
    diffusers_file, ldm_file = tmp_path / "diffusers.safetensors", tmp_path / "ldm.safetensors"
    save_file({k: v.contiguous() for k, v in other_vae.state_dict().items()}, diffusers_file)
    save_file(ldm_state_dict(other_vae), ldm_file)
    model = load("tiny", "none", "fp32", "cpu", vae_dtype="fp32")
    assert not same_weights(model.vae, other_vae)
    for ref in (vae_folder, pipeline, diffusers_file, ldm_file):
        loaded = load("tiny", "none", "fp32", "cpu", vae_dtype="fp32", vae=str(ref))
        assert same_weights(loaded.vae, other_vae), ref
        assert loaded.vae_dtype == torch.float32


def test_a_vae_that_cannot_be_used_fails_in_one_line(tmp_path):
    wide = tmp_path / "wide"
    AutoencoderKL(
        latent_channels=8, block_out_channels=[16, 32, 64, 64], norm_num_groups=8,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    ).save_pretrained(wide)
    sd15 = tmp_path / "sd15"  # the model's shapes, another latent space (as SD 1.5's VAE)
    config = {**tiny_vae().config, "scaling_factor": 0.18215}
    AutoencoderKL.from_config(config).save_pretrained(sd15)
    pickled = tmp_path / "vae.ckpt"
    pickled.write_bytes(b"\x80\x04N.")  # a pickle by its bytes (None), never read
    (tmp_path / "empty").mkdir()
    cases = [(tmp_path / "missing.safetensors", "not found"), (pickled, "pickle"),
             (tmp_path / "empty", "not a diffusers VAE"), ("someone/some-vae", "local cache"),
             (wide, "8-channel latents"), (sd15, "scales latents by 0.18215")]
    for ref, words in cases:
        with pytest.raises(ModelError, match=words) as caught:
            load("tiny", "none", "fp32", "cpu", vae=str(ref))
        assert "\n" not in str(caught.value)


def test_gen_records_the_vae_and_from_reruns_with_it(vae_folder, tmp_path):
    plain, swapped = tmp_path / "plain.png", tmp_path / "swapped.png"
    assert cli("gen", "a fox", *TINY, "-o", plain).exit_code == 0
    result = cli("gen", "a fox", *TINY, "--vae", vae_folder, "-o", swapped)
    assert result.exit_code == 0, result.stderr
    assert read_metadata(swapped)["hires"]["job"]["vae"] == str(vae_folder)
    pixels = [np.asarray(Image.open(p)) for p in (plain, swapped)]
    assert not np.array_equal(*pixels)
    again = tmp_path / "again.png"
    rerun = cli("gen", "--from", swapped, "--json", "-o", again)
    assert rerun.exit_code == 0, rerun.stderr
    assert f"VAE {vae_folder} (as recorded; --vae picks another)" in rerun.stderr
    assert json.loads(rerun.stdout)["vae"] == str(vae_folder)
    assert np.array_equal(np.asarray(Image.open(again)), pixels[1])


def test_a_job_without_a_vae_keeps_its_fingerprint():
    # Images made before --vae existed record no "vae": batch must not think them stale.
    job = Job(prompt="x", seed=1)
    older = {k: v for k, v in job.to_dict().items() if k != "vae"}
    assert settings_hash(job) == settings_hash(older)
    assert settings_hash(Job(prompt="x", seed=1, vae="some/vae")) != settings_hash(job)


def plan(*args):
    result = cli("plan", "x", "--size", "2048", *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_a_vae_made_for_fp16_is_planned_in_fp16_where_bf16_is_missing(tmp_path):
    made_for_fp16, sdxl_like = tmp_path / "fp16-fix", tmp_path / "plain"
    for folder, upcast in ((made_for_fp16, False), (sdxl_like, True)):
        folder.mkdir()
        # an SDXL VAE's config (one of another shape is refused for SDXL base, cached or not)
        config = {**SDXL_VAE_CONFIG, "force_upcast": upcast}
        (folder / "config.json").write_text(json.dumps(config))
    t4 = plan("--gpu", "t4")
    assert t4["fp32"] == ["vae"]
    assert plan("--gpu", "t4", "--vae", sdxl_like)["fp32"] == ["vae"]
    fixed = plan("--gpu", "t4", "--vae", made_for_fp16)
    assert fixed["fp32"] == [] and fixed["vae_seconds"] < t4["vae_seconds"] / 4
    assert plan("--gpu", "t4", "--vae", made_for_fp16, "--vae-dtype", "fp16")["stages"] == \
        fixed["stages"]
    # A card with bf16 keeps bf16 (as fast, and safer); fp16 for the plain VAE is refused.
    assert plan("--gpu", "4090", "--vae", made_for_fp16)["stages"] == \
        plan("--gpu", "4090")["stages"]
    result = cli("plan", "x", "--size", "2048", "--gpu", "t4", "--vae-dtype", "fp16")
    assert_usage_error(result, "overflows in fp16", "--vae")


def test_a_plan_for_a_card_without_bf16_names_a_vae_made_for_fp16():
    hint = "--vae madebyollin/sdxl-vae-fp16-fix"
    assert hint in cli("plan", "x", "--size", "2048", "--gpu", "t4").stderr
    for args in (("--gpu", "h100"), ("--gpu", "t4", "--vae-dtype", "fp32"),
                 ("--gpu", "h100", "--dtype", "fp32")):
        result = cli("plan", "x", "--size", "2048", *args)
        assert result.exit_code == 0 and hint not in result.stderr, args


def test_the_library_loads_every_setting_the_job_names(monkeypatch, tmp_path):
    # hires.upscale used to leave out vae_dtype: `hires.upscale(..., vae_dtype="fp32")` ran bf16.
    import sys

    import hires.pipeline
    from hires.upscale import upscale_job

    asked = []

    class Loaded(Exception):
        pass

    def load(*args):
        asked.append(args)
        raise Loaded

    for module in (hires.pipeline, sys.modules["hires.upscale"]):  # hires.upscale: the function
        monkeypatch.setattr(module, "load", load)
    image = tmp_path / "in.png"
    Image.new("RGB", (64, 64), "gray").save(image)
    job = Job(prompt="x", model="tiny", vae_dtype="fp32", vae="some/vae", offload="none",
              device="cpu")
    with pytest.raises(Loaded):
        hires.pipeline.generate(job)
    with pytest.raises(Loaded):
        upscale_job(Job(**{**job.__dict__, "image": str(image), "width": 128, "height": 128}))
    assert asked[0] == asked[1] == ("tiny", "auto", "auto", "cpu", False, "none", "fp32",
                                    "some/vae")


def test_a_tiled_decode_in_fp16_matches_fp32():
    # The trained tiny VAE is made for fp16 (force_upcast off); its tiled decode, statistics
    # passes included, must hold in fp16 as it does in bf16.
    from hires.vae import decode

    vae = tiny_vae()
    latents = torch.randn(1, 4, 48, 48, generator=torch.Generator().manual_seed(0))
    full = decode(vae, latents, tile=192)
    half = decode(vae.to(torch.float16), latents.half(), tile=192)
    diff = np.abs(full.astype(int) - half.astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.2


def test_a_vae_folder_for_another_model_is_refused_in_the_dry_run(tiny_folder, tmp_path):
    """Its config.json says so (another latent space, another shape): the dry run passed, and
    the run failed after the model loaded, exit 1 where a single file's refusal is 2."""

    sd15 = tmp_path / "sd15"
    AutoencoderKL.from_config({**tiny_vae().config, "scaling_factor": 0.18215}
                              ).save_pretrained(sd15)
    args = ("gen", "x", "--model", tiny_folder, "--vae", sd15, "--size", "256")
    said = f"VAE '{sd15}' scales latents by 0.18215 and this model's VAE by 0.13025"
    assert_usage_error(cli(*args, "--dry-run"), said)
    assert_usage_error(cli(*args[:3], "tiny", *args[4:], "--dry-run"), said)  # the builtin's
    assert_usage_error(cli(*args, "-o", tmp_path / "o.png"), said)  # before the model loads
    assert not (tmp_path / "o.png").exists()


def test_components_loaded_by_a_relative_vae_path_name_it_after_a_chdir(vae_folder, tmp_path,
                                                                         monkeypatch):
    from hires import generate

    monkeypatch.chdir(vae_folder.parent)
    swapped = load("tiny", "none", "fp32", "cpu", vae_dtype="fp32", vae=vae_folder.name)
    # Elsewhere, a folder of the same name holds another VAE: the job must not take it for theirs.
    monkeypatch.chdir(tmp_path)
    tiny_vae(seed=6, trained=False).save_pretrained(tmp_path / vae_folder.name)
    result = generate("x", components=swapped, width=256, height=256, steps=1, seed=5)
    assert result.job.vae == str(vae_folder)
    with pytest.raises(ValueError, match="but the components were loaded with vae"):
        generate("x", components=swapped, width=256, height=256, steps=1, seed=5,
                 vae=vae_folder.name)
