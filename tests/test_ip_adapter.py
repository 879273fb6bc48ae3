"""IP-Adapter on the tiny SDXL with LinFusion mounted: loading, guidance, scale, unload, errors."""

import shutil

import numpy as np
import pytest
import torch
from helpers_ip import WEIGHT_NAME, write_tiny_ip_adapter
from PIL import Image

from hires import ip_adapter as ipa
from hires.denoiser import Conditioning, Denoiser
from hires.linfusion import LinearAttention
from hires.model_refs import ModelError


@pytest.fixture(scope="module")
def comps():
    """A tiny model of this module's own: loading adapters must not touch the session's."""
    from hires.models import load

    return load("tiny", device="cpu")


@pytest.fixture(scope="module")
def adapter(comps, tmp_path_factory):
    return write_tiny_ip_adapter(tmp_path_factory.mktemp("ip") / "a", comps.pipe)


@pytest.fixture(scope="module")
def without(comps):
    """The output with no IP-Adapter loaded."""
    assert not ipa.is_loaded(comps.pipe)
    return eps(comps)


@pytest.fixture
def loaded(comps, adapter):
    record = ipa.load_ip_adapter(comps.pipe, str(adapter))
    yield record
    if ipa.is_loaded(comps.pipe):
        ipa.unload_ip_adapter(comps.pipe)


def picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8))


def text_cond() -> Conditioning:
    gen = torch.Generator().manual_seed(1)
    return Conditioning(torch.randn(2, 77, 64, generator=gen), torch.randn(2, 32, generator=gen),
                        torch.tensor([[256.0, 256, 0, 0, 256, 256]] * 2))


def eps(comps, image_embeds=None, split=False, guidance=1.0) -> torch.Tensor:
    """The guided noise for a fixed latent; guidance 1 runs only the conditional row."""
    cond = text_cond()
    cond.image_embeds = image_embeds
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(2)) * 3
    with torch.no_grad():
        return Denoiser(comps.unet, cond, guidance, split_cfg=split).eps(x, 3.0, 500)


def embeds(comps, seed: int = 0) -> list[torch.Tensor]:
    return [ipa.image_embeds(comps.pipe, picture(seed), comps.device, comps.dtype)]


def test_loads_with_linfusion_mounted(comps, loaded, adapter):
    unet = comps.unet
    attn1 = [m for n, m in unet.named_modules() if n.endswith("attn1")]
    assert attn1 and all(isinstance(m, LinearAttention) for m in attn1)
    kinds = {type(p).__name__ for p in unet.attn_processors.values()}
    assert kinds == {"IPAdapterAttnProcessor2_0"}  # every attn2, and only those
    assert len(unet.attn_processors) == sum(n.endswith("attn2") for n, _ in unet.named_modules())
    assert loaded["ref"] == str(adapter) and loaded["weight"] == WEIGHT_NAME
    assert len(loaded["sha256"]) == 64 and loaded["image_encoder"] == "image_encoder"
    assert loaded["image_encoder_params"] > 0 and loaded["projection_dim"] == 16


def test_embeds_rows_are_uncond_then_image(comps, loaded):
    e = embeds(comps)[0]
    assert e.shape == (2, 1, 16) and e.dtype == comps.dtype
    assert not e.requires_grad
    assert torch.equal(e[0], torch.zeros_like(e[0])) and e[1].abs().max() > 0


def test_image_prompt_steers_deterministically(comps, adapter, without):
    ipa.load_ip_adapter(comps.pipe, str(adapter))
    try:
        one = eps(comps, embeds(comps, 0))
        assert torch.equal(one, eps(comps, embeds(comps, 0)))
        assert (one - without).abs().max() > 1e-3
        assert (one - eps(comps, embeds(comps, 1))).abs().max() > 1e-4
    finally:
        ipa.unload_ip_adapter(comps.pipe)


def test_split_cfg_agrees_with_batched(comps, loaded):
    e = embeds(comps)
    # Guidance g scales the rows' fp32 rounding differences (batch 1 vs 2 matmuls) by up to
    # 2g - 1; at g = 5 they reach ~1.05e-5 with or without the adapter, at g = 2 ~4e-6.
    split, batched = (eps(comps, e, split=s, guidance=2.0) for s in (True, False))
    assert (split - batched).abs().max() <= 1e-5


def test_scale_zero_is_no_adapter(comps, adapter, without):
    # diffusers' IP attention skips the image branch when its scale is 0 (`continue`), so the
    # rest is the same scaled-dot-product attention as AttnProcessor2_0.
    ipa.load_ip_adapter(comps.pipe, str(adapter))
    try:
        e = embeds(comps)
        ipa.set_scale(comps.pipe, 0.0)
        assert (eps(comps, e) - without).abs().max() <= 1e-6
        ipa.set_scale(comps.pipe, 0.5)
        half = eps(comps, e)
        ipa.set_scale(comps.pipe, 1.0)
        assert (half - without).abs().max() > 1e-4 and (half - eps(comps, e)).abs().max() > 1e-4
        with pytest.raises(ipa.IPAdapterError, match=">= 0"):
            ipa.set_scale(comps.pipe, -1)
    finally:
        ipa.unload_ip_adapter(comps.pipe)


def test_unload_restores_unet_bit_for_bit(comps, adapter, without):
    pipe, unet = comps.pipe, comps.unet
    state = {k: v.clone() for k, v in unet.state_dict().items()}
    processors = dict(unet.attn_processors)
    config, pipe_config = dict(unet.config), dict(pipe.config)
    hid_type = unet.config.encoder_hid_dim_type
    ipa.load_ip_adapter(pipe, str(adapter))
    assert unet.encoder_hid_proj is not None and pipe.image_encoder is not None
    ipa.load_ip_adapter(pipe, str(adapter))  # a second load replaces the first
    ipa.unload_ip_adapter(pipe)
    after = unet.state_dict()
    assert after.keys() == state.keys()
    assert all(torch.equal(after[k], v) for k, v in state.items())
    assert all(p is processors[n] for n, p in unet.attn_processors.items())
    assert unet.encoder_hid_proj is None and unet.config.encoder_hid_dim_type == hid_type
    assert dict(unet.config) == config and dict(pipe.config) == pipe_config
    assert pipe.image_encoder is None and pipe.feature_extractor is None
    assert all(isinstance(m, LinearAttention) for n, m in unet.named_modules()
               if n.endswith("attn1"))
    assert torch.equal(eps(comps), without)
    with pytest.raises(ipa.IPAdapterError, match="nothing to unload"):
        ipa.unload_ip_adapter(pipe)


def test_hub_layout_folder(comps, tmp_path):
    write_tiny_ip_adapter(tmp_path / "repo" / "sdxl_models", comps.pipe)
    record = ipa.load_ip_adapter(comps.pipe, str(tmp_path / "repo"))
    try:
        assert record["image_encoder"] == "sdxl_models/image_encoder"
        assert embeds(comps)[0].shape == (2, 1, 16)
    finally:
        ipa.unload_ip_adapter(comps.pipe)


def one_line_error(pipe, ref, match, error=ipa.IPAdapterError, **kw):
    with pytest.raises(error, match=match) as info:
        ipa.load_ip_adapter(pipe, ref, **kw)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_errors_are_one_line_and_leave_the_unet_alone(comps, adapter, tmp_path):
    pipe, unet = comps.pipe, comps.unet
    state = {k: v.clone() for k, v in unet.state_dict().items()}
    processors = dict(unet.attn_processors)
    one_line_error(pipe, str(tmp_path / "nothere.safetensors"), "not found")
    one_line_error(pipe, str(tmp_path / "nothere"), "not found")

    pickled = tmp_path / "pk"
    pickled.mkdir()
    torch.save({}, pickled / "ip-adapter_sdxl.bin")
    for ref in (pickled, pickled / "ip-adapter_sdxl.bin"):
        one_line_error(pipe, str(ref), r"pickle .*--allow-pickle")

    wide = write_tiny_ip_adapter(tmp_path / "wide", pipe, cross_attention_dim=48)
    text = one_line_error(pipe, str(wide), "does not fit this UNet")
    assert "48" in text and "64" in text  # names the mismatch

    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(adapter, bare)
    one_line_error(pipe, str(bare / WEIGHT_NAME), "image_encoder/")
    one_line_error(pipe, str(bare), "image_encoder/")

    # an interrupted download: said before diffusers' 'incomplete metadata'
    cut = write_tiny_ip_adapter(tmp_path / "cut", pipe)
    cut.write_bytes(cut.read_bytes()[:20000])
    one_line_error(pipe, str(cut), rf"IP-Adapter {cut} is truncated \(20000 of \d+ bytes\)")
    one_line_error(pipe, str(cut.parent), rf"{cut.parent}: {WEIGHT_NAME} is truncated")

    # tests run offline; not cached while the Hub is unreachable is the model's error (exit 1)
    one_line_error(pipe, "h94/IP-Adapter", "not in the local cache", error=ModelError)

    # nothing half loaded is left behind
    assert not ipa.is_loaded(pipe) and pipe.image_encoder is None
    assert unet.encoder_hid_proj is None and unet.config.encoder_hid_dim_type is None
    assert all(p is processors[n] for n, p in unet.attn_processors.items())
    assert all(torch.equal(unet.state_dict()[k], v) for k, v in state.items())
    with pytest.raises(ipa.IPAdapterError, match="no IP-Adapter is loaded"):
        ipa.image_embeds(pipe, picture(0), comps.device, comps.dtype)


def test_a_lone_safetensors_beats_an_old_bin_of_the_reference_name(tmp_path):
    """A folder of ip-adapter-plus_sdxl.safetensors with an old ip-adapter_sdxl.bin beside it
    was refused as a pickle: the reference name's .bin was looked for before the folder's
    only .safetensors."""
    from safetensors.torch import save_file

    folder = tmp_path / "ip"
    (folder / "image_encoder").mkdir(parents=True)
    (folder / "image_encoder" / "config.json").write_text("{}")
    save_file({"image_proj.proj.weight": torch.zeros(1)},
              folder / "ip-adapter-plus_sdxl.safetensors")
    assert ipa.local_problem(str(folder)) is None
    torch.save({"image_proj": {}}, folder / "ip-adapter_sdxl.bin")
    assert ipa.local_problem(str(folder)) is None
    assert ipa._local_weight(folder, str(folder), False)[2] == "ip-adapter-plus_sdxl.safetensors"
    (folder / "ip-adapter-plus_sdxl.safetensors").unlink()  # the .bin alone: a pickle
    assert "--allow-pickle" in ipa.local_problem(str(folder))
