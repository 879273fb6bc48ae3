"""ControlNet in hires' stages: it changes the output, exactly as diffusers' own path does, under
every memory lever; the global pass dilates it but not its conditioning embedding; loading
errors are one line; the control image is fitted like an input image."""

import pytest
import torch
from helpers_control import tiny_controlnet
from PIL import Image

from hires import lean
from hires.controlnet import ControlError, check_fits, control_tensor, load_controlnet
from hires.denoiser import Conditioning, Control, Denoiser
from hires.model_refs import ModelError
from hires.strategy import Strategy, applied


@pytest.fixture(scope="module")
def setup():
    from hires.models import load

    comps = load("tiny", device="cpu")
    unet = comps.unet
    g = torch.Generator().manual_seed(0)
    cfg = unet.config
    pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    cond = Conditioning(torch.randn(2, 77, cfg.cross_attention_dim, generator=g),
                        torch.randn(2, pooled, generator=g),
                        torch.tensor([[128.0, 192, 0, 0, 128, 192]] * 2))
    x = torch.randn(1, 4, 16, 24, generator=g)
    image = torch.rand(1, 3, 128, 192, generator=g)
    return unet, tiny_controlnet(unet), cond, x, image


def eps(setup, strategy=Strategy(), scale=None, ratio=1):
    unet, net, cond, x, image = setup
    control = None if scale is None else Control(net, image, scale)
    d = Denoiser(unet, cond, 5.0, split_cfg=strategy.split_cfg, control=control)
    with torch.inference_mode(), applied(unet, strategy, torch.device("cpu"), controlnet=net), \
            d.dilated(ratio):
        out = d.eps(x, 3.0, 400)
    return out, d


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_controlnet_changes_the_output_deterministically_and_scale_0_is_none(setup):
    plain, d0 = eps(setup)
    ctl, d = eps(setup, scale=1.0)
    again, _ = eps(setup, scale=1.0)
    zero, _ = eps(setup, scale=0.0)
    assert rel(ctl, plain) > 0.05
    assert torch.equal(ctl, again)
    assert rel(zero, plain) <= 1e-6
    assert (d.evaluations, d.control_evaluations, d0.control_evaluations) == (2, 2, 0)


def test_same_as_diffusers_own_controlnet_path(setup):
    unet, net, cond, x, image = setup
    got, _ = eps(setup, scale=0.7)
    with torch.inference_mode():
        xi = x / (3.0**2 + 1) ** 0.5
        xx, t = torch.cat([xi, xi]), torch.full((1,), 400.0)
        added = {"text_embeds": cond.pooled, "time_ids": cond.time_ids}
        down, mid = net(xx, t, encoder_hidden_states=cond.embeds,
                        controlnet_cond=image.expand(2, -1, -1, -1), conditioning_scale=0.7,
                        added_cond_kwargs=added, return_dict=False)
        out = unet(xx, t, encoder_hidden_states=cond.embeds, added_cond_kwargs=added,
                   down_block_additional_residuals=down, mid_block_additional_residual=mid,
                   return_dict=False)[0]
    uncond, c = out.chunk(2)
    assert rel(got, uncond + 5.0 * (c - uncond)) <= 1e-6


@pytest.mark.parametrize("ratio", [1, 2])
def test_row_bands_ff_chunks_and_split_cfg_match_the_plain_path(setup, monkeypatch, ratio):
    reference, _ = eps(setup, scale=0.8, ratio=ratio)
    monkeypatch.setattr(lean, "BAND_BYTES", 4000)  # bands of a few rows everywhere
    calls = []
    real = lean.lean_embedding

    def counting(block, original):
        forward = real(block, original)
        return lambda *a, **k: (calls.append(1), forward(*a, **k))[1]

    monkeypatch.setattr(lean, "lean_embedding", counting)
    every = Strategy(split_cfg=True, ff_chunks=True, row_bands=True)
    got, _ = eps(setup, every, scale=0.8, ratio=ratio)
    assert calls  # the conditioning embedding took the banded path
    assert rel(got, reference) <= 1e-5


def test_banded_embedding_matches_its_module(setup, monkeypatch):
    net = setup[1]
    block = net.controlnet_cond_embedding
    monkeypatch.setattr(lean, "BAND_BYTES", 4000)
    image = torch.rand(2, 3, 72, 40)  # 9 latent rows: bands of one row, halo at both ends
    with torch.inference_mode():
        ref = block(image)
        got = lean.lean_embedding(block, block.forward)(image)
    assert rel(got, ref) <= 1e-6


def test_parked_skips_and_streamed_blocks_with_a_controlnet(setup, monkeypatch):
    """On a CPU nothing parks: force the paths, parking making real copies."""
    import hires.strategy as strategy_module
    from hires.strategy import parked_skips, streamed_blocks

    unet, net, cond, x, image = setup
    reference, _ = eps(setup, scale=1.0)
    monkeypatch.setattr(strategy_module, "park", lambda t: t.clone())
    cpu = torch.device("cpu")
    with torch.inference_mode(), parked_skips(unet), parked_skips(net), \
            streamed_blocks(net, cpu):
        got = Denoiser(unet, cond, 5.0, control=Control(net, image, 1.0)).eps(x, 3.0, 400)
    assert rel(got, reference) <= 1e-6
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())


def test_dilated_dilates_the_controlnet_but_not_its_embedding_and_restores(setup):
    unet, net, cond, x, image = setup
    d = Denoiser(unet, cond, 5.0, control=Control(net, image, 1.0))
    embedding = set(net.controlnet_cond_embedding.modules())
    convs = [m for m in net.modules()
             if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    before = [(m.dilation, m.padding) for m in convs]
    with pytest.raises(RuntimeError, match="midway"), d.dilated(4):
        for m in convs:
            assert m.dilation == ((1, 1) if m in embedding else (4, 4))
        assert net.conv_in.dilation == (4, 4)
        raise RuntimeError("midway")
    assert [(m.dilation, m.padding) for m in convs] == before


def test_ip_adapter_embeddings_still_reach_the_unet_alone(setup, monkeypatch):
    unet, net, cond, x, image = setup
    seen = {}

    def spy(name, real):
        def forward(self, *a, **k):
            seen[name] = set(k["added_cond_kwargs"])
            # The tiny UNet has no IP-Adapter to read image_embeds: stop at the call.
            return real(self, *a, **k) if real else (torch.zeros_like(a[0]),)
        return forward

    monkeypatch.setattr(type(unet), "forward", spy("unet", None))
    monkeypatch.setattr(type(net), "forward", spy("net", type(net).forward))
    from dataclasses import replace

    with_images = replace(cond, image_embeds=[torch.zeros(2, 1, 4)])
    d = Denoiser(unet, with_images, 5.0, control=Control(net, image, 1.0))
    with torch.inference_mode():
        d.eps(x, 3.0, 400)
    assert seen == {"net": {"text_embeds", "time_ids"},
                    "unet": {"text_embeds", "time_ids", "image_embeds"}}


def test_load_errors_are_one_line(tmp_path, setup):
    with pytest.raises(ControlError, match="not found"):
        load_controlnet(str(tmp_path / "missing.safetensors"), torch.float32)
    pickled = tmp_path / "control.pth"
    pickled.write_bytes(b"not really")
    with pytest.raises(ControlError, match="--allow-pickle"):
        load_controlnet(str(pickled), torch.float32)
    with pytest.raises(ControlError, match="not a diffusers ControlNet"):
        load_controlnet(str(tmp_path), torch.float32)
    with pytest.raises(ModelError, match="local cache"):  # exit 1, as for the model
        load_controlnet("nobody/no-such-controlnet", torch.float32)


def test_a_folder_saved_by_diffusers_loads_and_fits(tmp_path, setup):
    unet, net = setup[:2]
    net.save_pretrained(tmp_path / "cn")
    loaded = load_controlnet(str(tmp_path / "cn"), torch.float32)
    check_fits(loaded, unet)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                 net.state_dict().values(), strict=True))


def test_a_single_safetensors_file(tmp_path, setup):
    """from_single_file needs the original checkpoint's layout and a Hub config: a tiny one
    made here cannot load offline, and must fail in one line."""
    from safetensors.torch import save_file

    net = setup[1]
    path = tmp_path / "tiny-control.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path)
    import warnings

    with warnings.catch_warnings(record=True) as seen, \
            pytest.raises(ControlError, match="as a ControlNet") as e:
        warnings.simplefilter("always")
        load_controlnet(str(path), torch.float32)
    assert "\n" not in str(e.value)
    # diffusers' deprecated-argument notice to huggingface_hub is not the user's to see.
    assert not [w for w in seen if "local_dir_use_symlinks" in str(w.message)]


def test_an_sd15_controlnet_does_not_fit_sdxl(setup):
    from diffusers import ControlNetModel

    unet = setup[0]
    sd15 = ControlNetModel(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
                           down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                           cross_attention_dim=32, attention_head_dim=2,
                           conditioning_embedding_out_channels=(8, 16))
    with pytest.raises(ControlError, match="cross_attention_dim 32 vs the model's 64") as e:
        check_fits(sd15, unet)
    assert "addition_embed_type None" in str(e.value)
    check_fits(setup[1], unet)


def test_control_tensor_covers_and_centre_crops():
    # A 40x20 image, left half red, right half blue, asked at 16x16: scaled to 32x16, the
    # centre 16 columns are 8 red then 8 blue.
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (20, 0, 40, 20))
    t = control_tensor(image, 16, 16, "cpu", torch.float32)
    assert t.shape == (1, 3, 16, 16) and t.dtype == torch.float32
    assert 0.0 <= t.min() and t.max() <= 1.0
    assert t[0, 0, 8, 2] > 0.9 and t[0, 2, 8, 2] < 0.1  # red on the left
    assert t[0, 2, 8, 13] > 0.9 and t[0, 0, 8, 13] < 0.1  # blue on the right
    gray = control_tensor(Image.new("L", (10, 30), 128), 24, 8, "cpu", torch.bfloat16)
    assert gray.shape == (1, 3, 8, 24) and gray.dtype == torch.bfloat16


def test_linearize_gives_the_controlnet_linfusion_with_its_own_fine_tuning(setup):
    """Each ControlNet attn1 becomes a copy of its UNet twin's LinearAttention, its projections
    moved by what the ControlNet changed from the UNet's original attention."""
    from hires.controlnet import controlnet_like, linearize
    from hires.linfusion import LinearAttention
    from hires.models import load

    comps = load("tiny", device="cpu")
    unet = comps.unet
    net = tiny_controlnet(unet, seed=3)
    names = [n for n, m in net.named_modules() if n.endswith("attn1")]
    assert names and comps.attention_originals
    tuned = {n: net.get_submodule(n).to_v.weight.clone() for n in names}
    assert linearize(net, unet, comps.attention_originals) == len(names)
    for name in names:
        ours, twin = net.get_submodule(name), unet.get_submodule(name)
        assert isinstance(ours, LinearAttention) and ours is not twin
        delta = tuned[name] - comps.attention_originals[name].to_v.weight
        assert torch.allclose(ours.to_v.weight, twin.to_v.weight + delta, atol=1e-6)
        assert torch.equal(ours.to_q_[0].weight, twin.to_q_[0].weight)  # LinFusion's own MLP
    # Without the originals the copies are the twins' weights as they are.
    plain = tiny_controlnet(unet, seed=3)
    linearize(plain, unet)
    assert torch.equal(plain.get_submodule(names[0]).to_v.weight,
                       unet.get_submodule(names[0]).to_v.weight)
    # The planner's stand-in has the same modules (shapes only, on meta).
    like = controlnet_like(unet)
    assert [type(m).__name__ for n, m in like.named_modules() if n in names] == \
        ["LinearAttention"] * len(names)
    assert next(like.parameters()).device.type == "meta"
