"""Tiled VAE: equal to the untiled VAE where that fits, seam-free, always restores the VAE."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.models.attention_processor import Attention
from torch import nn

from hires import vae as tiled
from hires import vae_memo, vae_stats, vae_tiles
from hires.tiny import tiny_vae

# 256 px tiles overlapping by 128 px: on a 512 px image that is 3 x 3 tiles, and each keeps a
# 48 px margin of context, more than the tiny decoder's effective receptive field.
TILE, OVERLAP = 256, 128




def random_vae(seed: int = 0) -> AutoencoderKL:
    """The tiny VAE with random weights: harsh on statistics (1 % off a variance shows)."""
    return tiny_vae(seed, trained=False).eval()


@pytest.fixture(scope="module")
def vae() -> AutoencoderKL:
    return random_vae(0)


def smooth_latent(h: int, w: int, seed: int) -> torch.Tensor:
    """A low-frequency random field: what an image's latents look like, roughly."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 4, max(2, h // 8), max(2, w // 8), generator=g)
    return F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False) * 1.5


def noise_latent(h: int, w: int, seed: int) -> torch.Tensor:
    """White noise: the worst case for anything that estimates statistics from less."""
    return torch.randn(1, 4, h, w, generator=torch.Generator().manual_seed(seed))


def diffusers_decode(vae: AutoencoderKL, z: torch.Tensor) -> torch.Tensor:
    """diffusers' decode: untiled unless inside `diffusers_tiling`."""
    with torch.no_grad():
        return vae.decode(z / vae.config.scaling_factor).sample


def diffusers_encode(vae: AutoencoderKL, image: torch.Tensor) -> torch.Tensor:
    """diffusers' encode, latent mean in UNet space: untiled unless inside `diffusers_tiling`."""
    with torch.no_grad():
        return vae.encode(image).latent_dist.mean * vae.config.scaling_factor


@contextmanager
def diffusers_tiling(vae: AutoencoderKL, tile: int) -> Iterator[None]:
    """diffusers' own tiling with the same tile size, switched off again afterwards."""
    vae.enable_tiling()
    vae.tile_sample_min_size, vae.tile_latent_min_size = tile, tile // 8
    try:
        yield
    finally:
        vae.disable_tiling()
        vae.tile_sample_min_size = vae.config.sample_size
        vae.tile_latent_min_size = vae.config.sample_size // 8


def fade_zones(n: int, tile: int = TILE, overlap: int | None = OVERLAP) -> torch.Tensor:
    """Pixel rows/columns (of an n-latent side) where two tiles are cross-faded."""
    t, o = vae_tiles.tile_sizes(tile, overlap)
    spans = vae_tiles.spans(n, t, o)
    weights = vae_tiles.weights(spans, n, 8, vae_tiles.DROP * o * 8, vae_tiles.FADE * o * 8)
    mask = torch.zeros(n * 8, dtype=torch.bool)
    for (s, e), w in zip(spans, weights):
        mask[s * 8:e * 8] |= (w > 0) & (w < 1)
    return mask


def seam_ratio(image: torch.Tensor, zones_y: torch.Tensor, zones_x: torch.Tensor) -> float:
    """Mean |gradient| across the given rows/columns over mean |gradient| everywhere else."""
    gx = (image[..., :, 1:] - image[..., :, :-1]).abs().mean(dim=(0, 1, 2))
    gy = (image[..., 1:, :] - image[..., :-1, :]).abs().mean(dim=(0, 1, 3))
    # A gradient sample straddles a zone when either of its two pixels is in it.
    mx, my = zones_x[:-1] | zones_x[1:], zones_y[:-1] | zones_y[1:]
    rx = gx[mx].mean() / gx[~mx].mean()
    ry = gy[my].mean() / gy[~my].mean()
    return float((rx + ry) / 2)


@pytest.fixture(scope="module")
def smooth_512(vae):
    """A smooth 64 x 64 latent, its untiled decode and our tiled decode (shared by tests)."""
    z = smooth_latent(64, 64, seed=1)
    return z, diffusers_decode(vae, z), tiled.decode_float(vae, z, tile=TILE, overlap=OVERLAP)


def test_decode_matches_untiled_where_diffusers_tiling_does_not(vae, smooth_512):
    z, reference, ours = smooth_512
    err = (ours - reference).abs().max().item()
    assert err <= 0.02
    with diffusers_tiling(vae, TILE):
        theirs = diffusers_decode(vae, z)
    # Measured: ours 0.0003, diffusers' 2.0 (each tile normalized on its own statistics).
    assert (theirs - reference).abs().max().item() > max(0.1, 10 * err)


def test_decode_matches_untiled_on_white_noise(vae):
    z = noise_latent(48, 48, seed=1)
    ours = tiled.decode_float(vae, z, tile=TILE, overlap=OVERLAP)
    assert (ours - diffusers_decode(vae, z)).abs().max().item() <= 0.02


def test_no_seams(vae, smooth_512):
    z, reference, ours = smooth_512
    zones = fade_zones(64)
    ratio = seam_ratio(ours, zones, zones)
    assert 0.8 <= ratio <= 1.25
    # The borders add nothing: the untiled image measures the same in the same places.
    assert abs(ratio - seam_ratio(reference, zones, zones)) < 0.01
    # Independent tiles, cut without overlap, fail the same metric (measured 3.7).
    naive = torch.zeros_like(reference)
    for y in (0, 32):
        for x in (0, 32):
            naive[..., y * 8:(y + 32) * 8, x * 8:(x + 32) * 8] = diffusers_decode(
                vae, z[..., y:y + 32, x:x + 32])
    cut = torch.zeros(512, dtype=torch.bool)
    cut[252:260] = True
    assert seam_ratio(naive, cut, cut) > 2


def test_non_square_odd_size(vae):
    z = smooth_latent(37, 69, seed=2)
    image = tiled.decode_float(vae, z, tile=TILE, overlap=OVERLAP)
    assert image.shape == (1, 3, 296, 552)
    assert (image - diffusers_decode(vae, z)).abs().max().item() <= 0.02


def test_uint8_is_the_quantized_float_and_progress_counts_tiles(vae):
    z = smooth_latent(32, 48, seed=3)
    calls = []
    pixels = tiled.decode(vae, z, tile=TILE, overlap=OVERLAP,
                          progress=lambda done, total: calls.append((done, total)))
    assert pixels.shape == (256, 384, 3) and pixels.dtype == np.uint8
    image = tiled.decode_float(vae, z, tile=TILE, overlap=OVERLAP)
    np.testing.assert_array_equal(pixels, tiled.to_uint8(image).numpy())

    assert not any("forward" in m.__dict__ for m in vae.modules())  # patches undone

    # One call per tile run: a statistics pass per GroupNorm and attention, then the decode.
    t, o = vae_tiles.tile_sizes(TILE, OVERLAP)
    tiles = len(vae_tiles.spans(32, t, o)) * len(vae_tiles.spans(48, t, o))
    norms = sum(isinstance(m, nn.GroupNorm) for m in vae.decoder.modules())
    attns = sum(isinstance(m, Attention) for m in vae.decoder.modules())
    total = (norms + attns) * tiles + tiles
    assert tiles == 2
    assert calls == [(i, total) for i in range(1, total + 1)]
    for mode in vae_stats.MODES:
        calls.clear()
        tiled.decode(vae, z, tile=TILE, overlap=OVERLAP, stats=mode,
                     progress=lambda done, total: calls.append((done, total)))
        assert calls == [(i, total) for i in range(1, total + 1)]


def test_fast_mode_is_exact_in_memory_whatever_its_budget(vae, monkeypatch):
    """Fast statistics write no scratch file; a short memory budget costs time, not accuracy."""
    z = smooth_latent(32, 48, seed=8)  # 2 tiles
    exact = tiled.decode_float(vae, z, tile=TILE, overlap=OVERLAP, stats="exact")

    def no_scratch(*args, **kwargs):
        raise AssertionError("fast mode opened a scratch file")

    monkeypatch.setattr(vae_memo.tempfile, "TemporaryFile", no_scratch)
    # Room for everything; for the low-resolution levels only; for nothing (all recomputed).
    for budget in (None, 3e6, 0):
        monkeypatch.setattr(vae_stats, "FAST_BYTES", budget)
        fast = tiled.decode_float(vae, z, tile=TILE, overlap=OVERLAP, stats="fast")
        torch.testing.assert_close(fast, exact, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="stats must be one of"):
        tiled.decode(vae, z, tile=TILE, stats="sampled")


def test_fast_budget_is_a_share_of_free_memory(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(vae_stats, "free_memory", lambda device: 22e9)
    assert vae_stats.fast_budget(cpu) == 0.5 * (22e9 - 2e9)
    monkeypatch.setattr(vae_stats, "free_memory", lambda device: 3e9)
    assert vae_stats.fast_budget(cpu) == vae_stats.FAST_FLOOR
    monkeypatch.setattr(vae_stats, "free_memory", lambda device: 40e9)
    assert vae_stats.fast_budget(torch.device("cuda")) == 0.8 * (40e9 - 8e9)
    # An fp32 VAE's tile runs take twice the room: the reserve beside the kept outputs too.
    assert vae_stats.fast_budget(torch.device("cuda"), torch.float32) == 0.8 * (40e9 - 16e9)
    assert vae_stats.fast_budget(cpu, torch.float32) == 0.5 * (40e9 - 2e9)
    # A GPU with less free than its reserve keeps nothing there (all spills to the CPU's
    # memory): a floor of 1 GB on a 4 GiB card put a plan's use over the card.
    monkeypatch.setattr(vae_stats, "free_memory", lambda device: 5e9)
    assert vae_stats.fast_budget(torch.device("cuda")) == 0.0
    monkeypatch.setattr(vae_stats, "FAST_BYTES", 5e6)
    assert vae_stats.fast_budget(cpu) == 5e6


def test_a_tiled_pass_keeps_outputs_beside_its_tile_runs(vae, monkeypatch):
    """Decode and encode tell the fast mode what one tile run takes (the planner's figure),
    so the outputs they keep leave room for it."""
    from hires.costs import VaeShape, vae_tile_peak

    seen: list[float] = []
    real = vae_stats.fast_budget

    def spy(device, dtype, working=0.0):
        seen.append(working)
        return real(device, dtype, working)

    monkeypatch.setattr(vae_stats, "fast_budget", spy)
    z = smooth_latent(64, 64, seed=7)
    image = tiled.decode(vae, z, tile=TILE, overlap=OVERLAP, stats="fast")
    tiled.encode(vae, image, tile=TILE, overlap=OVERLAP, stats="fast")
    run = vae_tile_peak(VaeShape.from_config(dict(vae.config)), TILE, 4)
    assert seen == [run, run]


def test_small_images_take_one_plain_pass(vae):
    z = smooth_latent(16, 24, seed=4)
    calls = []
    pixels = tiled.decode(vae, z, tile=TILE, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 1)]
    # Channels-last convolutions on the CPU round differently: a few pixels land one level off.
    diff = np.abs(pixels.astype(int) - tiled.to_uint8(diffusers_decode(vae, z)).numpy())
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    image = diffusers_decode(vae, z).clamp(-1, 1)
    torch.testing.assert_close(tiled.encode(vae, image, tile=TILE), diffusers_encode(vae, image))


def test_encode_matches_untiled(vae, smooth_512):
    image = smooth_512[1].clamp(-1, 1)
    expected = diffusers_encode(vae, image)
    scale = expected.abs().max().item()
    ours = tiled.encode(vae, image, tile=TILE, overlap=OVERLAP)
    assert ours.shape == (1, 4, 64, 64) and ours.dtype == torch.float32
    err = (ours - expected).abs().max().item()
    assert err <= 0.01 * scale
    with diffusers_tiling(vae, TILE):
        theirs = diffusers_encode(vae, image)
    # Measured: ours 0.35 %, diffusers' 64 % of the latents' largest magnitude.
    assert (theirs - expected).abs().max().item() > 10 * err


def test_encode_uint8_pixels(vae):
    z = smooth_latent(48, 48, seed=7)
    pixels = tiled.to_uint8(diffusers_decode(vae, z)).numpy()
    floats = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1
    expected = diffusers_encode(vae, floats)
    ours = tiled.encode(vae, pixels, tile=TILE, overlap=OVERLAP)
    assert (ours - expected).abs().max().item() <= 0.01 * expected.abs().max().item()


def test_shift_factor_is_applied():
    base = random_vae(0)
    vae = AutoencoderKL(**{**base.config, "shift_factor": 0.25}).eval()
    vae.load_state_dict(base.state_dict())
    z = smooth_latent(16, 16, seed=5)
    sf = vae.config.scaling_factor
    with torch.no_grad():
        expected = vae.decode(z / sf + 0.25).sample
        image = expected.clamp(-1, 1)
        expected_latents = (vae.encode(image).latent_dist.mean - 0.25) * sf
    # Float noise only (1e-5 on one thread, whose sums run in another order); a shift
    # applied wrongly or not at all is off by about 0.25.
    torch.testing.assert_close(tiled.decode_float(vae, z, tile=TILE), expected, atol=1e-4,
                               rtol=1e-4)
    torch.testing.assert_close(tiled.encode(vae, image, tile=TILE), expected_latents,
                               atol=1e-4, rtol=1e-4)


def test_bad_inputs_are_refused(vae):
    with pytest.raises(ValueError, match="1 x C x h x w"):
        tiled.decode(vae, torch.zeros(2, 4, 8, 8))
    with pytest.raises(ValueError, match="multiple of 8"):
        tiled.encode(vae, np.zeros((100, 64, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        tiled.encode(vae, np.zeros((64, 64, 3), dtype=np.float32))
    for small in (tiled.decode, tiled.decode_float):  # one plain pass, but still checked
        with pytest.raises(ValueError, match="stats must be one of"):
            small(vae, torch.zeros(1, 4, 8, 8), stats="sampled")


def _patch_state(vae: AutoencoderKL):
    norms = [m for m in vae.modules() if isinstance(m, nn.GroupNorm)]
    attns = [m for m in vae.modules() if isinstance(m, Attention)]
    return norms, [m.__dict__.get("forward") for m in norms], [m.processor for m in attns]


@pytest.mark.parametrize("part", ["decoder", "encoder"])
def test_patches_are_undone_even_when_the_vae_raises(part):
    vae = random_vae(0)
    z = smooth_latent(48, 48, seed=6)
    image = diffusers_decode(vae, z).clamp(-1, 1)
    reference = diffusers_decode(vae, z)
    norms, _, _ = _patch_state(vae)
    # A forward already installed on an instance (as accelerate's hooks do) must come back.
    own_forward = norms[0].forward
    norms[0].forward = own_forward
    before = _patch_state(vae)

    calls = 0

    def fail_midway(module, args, output):
        nonlocal calls
        calls += 1
        if calls == 3:  # some passes in: statistics half gathered
            raise RuntimeError("boom")

    # (On a convolution: the tiled VAE runs blocks and resnets step by step, not through their
    # forward.)
    block = vae.decoder.up_blocks[1] if part == "decoder" else vae.encoder.down_blocks[1]
    block = block.resnets[0].conv1
    handle = block.register_forward_hook(fail_midway)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            if part == "decoder":
                tiled.decode(vae, z, tile=TILE, overlap=OVERLAP)
            else:
                tiled.encode(vae, image, tile=TILE, overlap=OVERLAP)
    finally:
        handle.remove()
    after = _patch_state(vae)
    assert after[1] == before[1] and after[2] == before[2]
    assert norms[0].__dict__["forward"] is own_forward
    assert all("forward" not in m.__dict__ for m in norms[1:])
    # And the VAE works as before, bit for bit.
    torch.testing.assert_close(diffusers_decode(vae, z), reference, rtol=0, atol=0)


@pytest.mark.parametrize("part", ["decoder", "encoder"])
def test_saved_block_outputs_change_nothing_and_spare_work(vae, part, monkeypatch):
    z = smooth_latent(48, 48, seed=7)
    image = diffusers_decode(vae, z).clamp(-1, 1)
    net = getattr(vae, part)
    runs = 0

    def count(module, args, output):
        nonlocal runs
        runs += 1

    def run() -> tuple[torch.Tensor, int]:
        nonlocal runs
        runs = 0
        handle = net.conv_in.register_forward_hook(count)
        try:
            if part == "decoder":
                out = tiled.decode_float(vae, z, tile=TILE, overlap=OVERLAP, stats="exact")
            else:
                out = tiled.encode(vae, image, tile=TILE, overlap=OVERLAP, stats="exact")
        finally:
            handle.remove()
        return out, runs

    saved, saved_runs = run()
    monkeypatch.setattr(vae_stats, "MEMO_BYTES", 0)  # nothing fits: every pass starts afresh
    fresh, fresh_runs = run()
    torch.testing.assert_close(saved, fresh, rtol=0, atol=1e-6)
    # Without saved outputs the first block runs in every pass; with them, once per tile in the
    # statistics passes plus once per tile in the final pass.
    assert saved_runs < fresh_runs / 2


# A trained VAE on a photo it never saw: what users decode. Bounds in 8-bit steps against the
# untiled decode (issue 14): max 3, mean 0.3. Measured at 2048 px: max 1, mean < 0.001.
PHOTO_TILE = 384  # 768 x 512 px in 3 x 2 tiles, default overlap (96 px)


@pytest.fixture(scope="module")
def photo():
    """The trained tiny VAE, latents of skimage's held-out `coffee` at 768 x 512, and their
    untiled decode."""
    import skimage.data as skimage_data
    from PIL import Image

    trained = tiny_vae(trained=True).eval()
    pixels = np.asarray(Image.fromarray(skimage_data.coffee()).resize((768, 512), Image.LANCZOS))
    x = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    z = diffusers_encode(trained, x)
    return trained, z, diffusers_decode(trained, z)


@pytest.mark.parametrize("stats", ["fast", "exact"])
def test_trained_vae_on_a_held_out_photo_matches_untiled(photo, stats):
    trained, z, reference = photo
    t, o = vae_tiles.tile_sizes(PHOTO_TILE, None)
    assert len(vae_tiles.Grid.cover(tuple(z.shape[-2:]), t, o)) == 6
    ours = tiled.decode(trained, z, tile=PHOTO_TILE, stats=stats)
    diff = np.abs(ours.astype(int) - tiled.to_uint8(reference).numpy())
    assert diff.max() <= 3 and diff.mean() <= 0.3


def test_trained_vae_shows_no_seams_on_a_photo(photo):
    trained, z, reference = photo
    ours = tiled.decode_float(trained, z, tile=PHOTO_TILE)
    zones = [fade_zones(n, PHOTO_TILE, None) for n in z.shape[-2:]]
    # A photo's own edges may well cross the fade zones (the ratio is 1.9 here for both), so
    # the seam metric is ours over the untiled image's, in the same places: 1 when the tile
    # borders add nothing.
    assert seam_ratio(ours, *zones) / seam_ratio(reference, *zones) == pytest.approx(1, abs=0.02)


def test_a_small_overlap_is_enough_on_the_trained_vae(photo):
    # The default overlap stops at vae_tiles.MAX_OVERLAP because what a tile edge disturbs is
    # set by the network's depth: a quarter of that (64 px, a 24 px dropped edge) still decodes
    # within the bounds (measured max 1, mean 0.005) and encodes within 0.01 of the untiled
    # latents (measured 0.0007). Half of it again fails both: max 8, latents 0.07 off.
    trained, z, reference = photo
    assert vae_tiles.tile_sizes(4096, None)[1] * vae_tiles.SCALE == vae_tiles.MAX_OVERLAP
    ours = tiled.decode(trained, z, tile=PHOTO_TILE, overlap=vae_tiles.MAX_OVERLAP // 4)
    diff = np.abs(ours.astype(int) - tiled.to_uint8(reference).numpy())
    assert diff.max() <= 3 and diff.mean() <= 0.3
    image = tiled.to_uint8(reference).numpy()
    x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    untiled = diffusers_encode(trained, x)
    latents = tiled.encode(trained, image, tile=PHOTO_TILE, overlap=vae_tiles.MAX_OVERLAP // 4)
    assert (latents - untiled).abs().max() < 0.01


@contextmanager
def channels_last_convs(vae: AutoencoderKL) -> Iterator[None]:
    """diffusers' untiled passes with every conv's input channels-last, as hires' tiles run: on
    an AVX2 CPU (no AVX-512) bf16 convs of NCHW maps take torch's slow reference kernel (an
    untiled bf16 decode of 768 x 512 px: 124 s there, 5.6 s channels-last)."""
    def to_channels_last(module: torch.nn.Module, args: tuple) -> tuple:
        return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])

    hooks = [m.register_forward_pre_hook(to_channels_last) for m in vae.modules()
             if isinstance(m, torch.nn.Conv2d)]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def test_bf16_vae_stays_within_the_bounds_of_the_fp32_one(photo):
    # bf16 is the VAE's dtype on CUDA and on bf16-capable CPUs (hires.models.choose_vae_dtype).
    # Against the fp32 untiled decode: measured max 2, mean 0.24 (coffee) on AVX-512 (Zen 5),
    # max 3, mean 0.23 on AVX2 (Zen 3); bf16's own rounding nearly all of it (untiled bf16:
    # max 2, mean 0.24 on Zen 5); against the untiled bf16 decode max 1 on both.
    trained, z, reference = photo
    half = copy.deepcopy(trained).to(torch.bfloat16)
    ours = tiled.decode(half, z, tile=PHOTO_TILE).astype(int)
    with torch.no_grad(), channels_last_convs(half):
        untiled = half.decode((z / half.config.scaling_factor).to(torch.bfloat16)).sample
    for against in (reference, untiled.float()):
        diff = np.abs(ours - tiled.to_uint8(against).numpy())
        assert diff.max() <= 3 and diff.mean() <= 0.3
    # Encode: the latents differ by bf16 steps (measured 0.016 from untiled bf16 on Zen 5,
    # 0.047 on Zen 3); a tiled round trip of coffee / chelsea / astronaut at 768 x 512 lost
    # 0.06 / -0.01 / 0.02 dB of PSNR to fp32's (26.2 / 30.8 / 26.6 dB).
    image = tiled.to_uint8(reference).numpy()
    x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].to(torch.bfloat16) / 127.5 - 1
    latents = tiled.encode(half, image, tile=PHOTO_TILE)
    assert latents.dtype == torch.float32
    with channels_last_convs(half):
        assert (latents - diffusers_encode(half, x).float()).abs().max() < 0.1


def test_low_precision_group_norm_normalizes_in_fp32():
    # The bf16 path (batch_norm's mixed-dtype kernel) against fp32 math on the same input:
    # within one bf16 rounding of the output, even far from zero mean, where a bf16
    # x * scale + shift (the fp32 path's form) loses x - mean's digits.
    norm = torch.nn.GroupNorm(4, 16).eval().requires_grad_(False)
    norm.weight.uniform_(0.5, 2)
    norm.bias.uniform_(-1, 1)
    x = (torch.randn(1, 16, 32, 32) * 2 + 40).to(torch.bfloat16)
    g = x.float().view(1, 4, -1)
    state = vae_stats.State(size=(32, 32), cell=1, device=torch.device("cpu"))
    state.stats[norm] = (g.mean((0, 2)), g.var((0, 2), unbiased=False))
    want = F.group_norm(x.float(), 4, norm.weight, norm.bias, norm.eps)
    got = vae_stats._group_norm(state, norm, x)
    assert got.dtype == torch.bfloat16
    error = (got.float() - want).abs().max()
    assert error <= 2**-8 * want.abs().max()  # one bf16 rounding of the output
    mean, var = (v.repeat_interleave(4).view(1, -1, 1, 1) for v in state.stats[norm])
    scale = norm.weight.view(1, -1, 1, 1) / (var + norm.eps).sqrt()
    shift = norm.bias.view(1, -1, 1, 1) - mean * scale
    naive = torch.addcmul(shift.to(torch.bfloat16), x, scale.to(torch.bfloat16))
    assert (naive.float() - want).abs().max() > 4 * error


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("batch", [1, 2])
def test_moments_are_exact_in_bands_and_leave_the_map_as_it_was(dtype, layout, batch,
                                                                 monkeypatch):
    # Several bands of rows (a small band size), on a cropped view as the passes hand it over,
    # far from zero mean: the per-channel sums about the pilot agree with float64 ones, and the
    # activations are untouched (.float() of a float32 map is the map itself).
    monkeypatch.setitem(vae_stats.MOMENT_BAND, "cpu", 3 * 16 * 37)
    x = (torch.randn(batch, 16, 40, 50) * 2 + 30).to(dtype).contiguous(memory_format=layout)
    before = x.clone()
    part = x[:, :, 3:33, 5:42]
    pilot = part[:, :, ::4, ::4].float().mean((0, 2, 3))
    s, ss = vae_stats._moments(part, pilot)
    d = part.double() - pilot.double().view(1, -1, 1, 1)
    torch.testing.assert_close(s.double(), d.sum((0, 2, 3)), rtol=1e-5, atol=1e-2)
    torch.testing.assert_close(ss.double(), d.square().sum((0, 2, 3)), rtol=1e-5, atol=1e-2)
    assert torch.equal(x, before)


def test_gathering_moments_takes_bands_not_a_float32_copy_of_the_tile(monkeypatch):
    # An SDXL full-resolution map of a 2048 px tile in bf16 (1 GiB), on the simulated GPU: its
    # moments take one float32 band on top (the GPU's band size), not float32 copies of the
    # whole map (4 GiB more, beyond the tile's own peak that the planner prices).
    from hires.memsim import peak_of

    monkeypatch.setitem(vae_stats.MOMENT_BAND, "meta", vae_stats.MOMENT_BAND["cuda"])
    norm = nn.GroupNorm(32, 128)
    state = vae_stats.State(size=(256, 256), cell=1, device=torch.device("meta"))
    size = 128 * 2048 * 2048 * 2

    def gather() -> None:
        x = torch.empty(1, 128, 2048, 2048, device="meta", dtype=torch.bfloat16)
        vae_stats._add_moments(state, norm, x[:, :, 16:2032, 16:2032])

    extra = peak_of(gather) - size
    assert extra <= 4 * vae_stats.MOMENT_BAND["cuda"] + 2**20  # one float32 band
    assert extra < size / 2


def test_memo_spills_what_its_budget_cannot_hold_and_frees_the_right_share():
    # Spilled outputs count as the power-of-two blocks torch's pinned allocator gives them.
    memo = vae_memo.MemoryMemo(budget=100, spill=512)
    a, b, c = (torch.zeros(n, dtype=torch.uint8) for n in (80, 200, 15))
    box1, box2, cpu = (0, 1, 0, 1), (1, 2, 0, 1), torch.device("cpu")
    memo.save(1, box1, a)  # fits the budget
    memo.save(1, box2, b)  # does not: spilled, as 256
    assert (memo.used, memo.spilled) == (80, 256)
    memo.save(2, box2, c)  # deeper, and fits beside `a`: the spilled one is freed
    assert (memo.used, memo.spilled) == (95, 0)
    memo.save(3, box1, b)  # no room beside `c`: spilled, and `a` freed
    assert (memo.used, memo.spilled) == (15, 256)
    memo.save(4, box1, (a, a))  # 160: spilled (as 256) in place of its own
    assert (memo.used, memo.spilled) == (15, 256) and memo.load(box1, cpu)[0] == 4
    number, x = memo.load(box2, cpu)
    assert number == 2 and x is c  # off a GPU nothing is copied
    memo.save(5, box2, torch.zeros(300, dtype=torch.uint8))  # 512 more fits nowhere
    assert memo.load(box2, cpu)[0] == 2 and (memo.used, memo.spilled) == (15, 256)
    assert [vae_memo.spilled_size(n) for n in (1, 2, 3, 256, 257)] == [1, 2, 4, 256, 512]


def test_spill_budget_is_a_share_of_the_cpus_free_memory_on_a_gpu_only(monkeypatch):
    monkeypatch.setattr(vae_stats, "free_memory", lambda device: 72e9)
    assert vae_stats.spill_budget(torch.device("cpu")) == 0
    assert vae_stats.spill_budget(torch.device("cuda")) == 0.5 * (72e9 - 8e9)
    monkeypatch.setattr(vae_stats, "free_memory", lambda device: 5e9)
    assert vae_stats.spill_budget(torch.device("cuda")) == 0
    monkeypatch.setattr(vae_stats, "SPILL_BYTES", 7e6)
    assert vae_stats.spill_budget(torch.device("cpu")) == 7e6


def test_fast_mode_with_spilled_outputs_is_exact(vae, monkeypatch):
    z = smooth_latent(32, 48, seed=8)  # 2 tiles
    exact = tiled.decode_float(vae, z, tile=TILE, overlap=OVERLAP, stats="exact")
    monkeypatch.setattr(vae_stats, "FAST_BYTES", 1e6)
    monkeypatch.setattr(vae_stats, "SPILL_BYTES", 3e6)
    spilled = []
    real = vae_memo.MemoryMemo.save

    def save(memo, number, box, x):
        real(memo, number, box, x)
        spilled.append(memo.spilled)

    monkeypatch.setattr(vae_memo.MemoryMemo, "save", save)
    fast = tiled.decode_float(vae, z, tile=TILE, overlap=OVERLAP, stats="fast")
    assert max(spilled) == 0  # not asked to
    fast = tiled.decode_float(vae, z, tile=TILE, overlap=OVERLAP, stats="fast",
                              spill=float("inf"))
    torch.testing.assert_close(fast, exact, rtol=0, atol=1e-5)
    assert 1e6 < max(spilled) <= 3e6  # some outputs went to the spill share, up to its size
    spilled.clear()
    fast = tiled.decode_float(vae, z, tile=TILE, overlap=OVERLAP, stats="fast", spill=1e6)
    torch.testing.assert_close(fast, exact, rtol=0, atol=1e-5)
    assert 0 < max(spilled) <= 1e6  # the plan's share, when it is less than the budget


def test_a_tile_run_with_room_to_spill_copies_one_output_to_the_cpu(vae, monkeypatch):
    """A spilled output is copied as its tile's run ends, not as it is made: a deeper one made
    after it took its place, and its copy (over the host link, on a GPU) was for nothing. (An
    output that fits nowhere has the one kept copied at once, so a run with little room may
    copy two: vae_cost's replay, checked against the memo, counts those too.)"""
    z = smooth_latent(32, 48, seed=8)
    monkeypatch.setattr(vae_stats, "FAST_BYTES", 0)  # every output kept goes to the CPU
    monkeypatch.setattr(vae_stats, "SPILL_BYTES", 1e9)
    runs, out, loading = [], [], []
    real_call, real_load, real_moved = (vae_memo.Runner.__call__, vae_memo.MemoryMemo.load,
                                        vae_memo._moved)

    def call(runner, box):
        before = len(out)
        try:
            return real_call(runner, box)
        finally:
            runs.append(len(out) - before)  # (a pass's Stop too)

    def load(memo, box, device):
        loading.append(box)
        try:
            return real_load(memo, box, device)
        finally:
            loading.pop()

    def moved(x, device):
        if not loading:  # out to the CPU, not back; a pair of tensors (a resnet's) once
            out.append(device.type)
            loading.append(x)
            try:
                return real_moved(x, device)
            finally:
                loading.pop()
        return real_moved(x, device)

    monkeypatch.setattr(vae_memo.Runner, "__call__", call)
    monkeypatch.setattr(vae_memo.MemoryMemo, "load", load)
    monkeypatch.setattr(vae_memo, "_moved", moved)
    exact = tiled.decode_float(vae, z, tile=TILE, overlap=OVERLAP, stats="exact")
    runs.clear()
    fast = tiled.decode_float(vae, z, tile=TILE, overlap=OVERLAP, stats="fast",
                              spill=float("inf"))
    torch.testing.assert_close(fast, exact, rtol=0, atol=1e-5)
    assert max(runs) == 1 and set(out) == {"cpu"}  # each run's kept output, once


@pytest.mark.parametrize("kwargs", [dict(tile=8), dict(tile=0), dict(tile=-64), dict(tile=100),
                                    dict(tile=256.0), dict(tile=256, overlap=0),
                                    dict(tile=256, overlap=-8), dict(tile=256, overlap=12),
                                    dict(tile=256, overlap=136)])
def test_tiles_that_would_show_seams_or_cannot_slice_are_refused(vae, kwargs):
    """They ran quietly up to 160 8-bit steps off an untiled decode (or failed with a bare
    TypeError from a slice)."""
    z = smooth_latent(48, 48, 0)
    with pytest.raises(ValueError, match=r"^(tile|overlap) must be "):
        tiled.decode(vae, z, **kwargs)
    with pytest.raises(ValueError, match=r"^(tile|overlap) must be "):
        tiled.encode(vae, np.zeros((384, 384, 3), np.uint8), **kwargs)


def test_numpy_whole_numbers_are_taken_for_tiles(vae):
    """np.int64(256) was refused as 'not a whole number of px'."""
    z = smooth_latent(48, 48, 0)
    expected = tiled.decode(vae, z, tile=256, overlap=64)
    assert np.array_equal(tiled.decode(vae, z, tile=np.int64(256), overlap=np.int32(64)),
                          expected)
