"""Seam-free tiled VAE encode/decode with flat memory: the public entry.

    from hires import vae as tiled_vae
    pixels = tiled_vae.decode(vae, latents, tile=1024, stats="fast")   # H x W x 3 uint8
    latents = tiled_vae.encode(vae, pixels, tile=1024, stats="fast")

Why our own: diffusers' `AutoencoderKL.enable_tiling()` runs every GroupNorm of a tile on that
tile's own statistics, so tones shift from tile to tile, and it keeps every decoded tile plus
the whole output on the compute device (gigabytes at 16K). Here every GroupNorm uses statistics
of the whole image (`hires.vae_stats`, modes "fast" and "exact"), the mid-block attention sees
the whole image (`hires.vae_attention`), tiles are cross-faded and finished rows go straight into
a CPU uint8 canvas (`hires.vae_tiles`).

Dtype: the VAE runs in its own dtype. The SDXL VAE overflows in fp16 (inf/NaN inside the
decoder), so the caller should run it in fp32 or bf16 (or use an fp16-fixed VAE).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator
from contextlib import closing

import numpy as np
import torch
from torch import Tensor

from hires.costs import VaeShape, vae_tile_peak
from hires.errors import NotFinite, dtype_name
from hires.memory import free_memory
from hires.vae_stats import MODES, Progress, whole_image
from hires.vae_tiles import (
    LEAST_TILE,
    SCALE,
    Box,
    Grid,
    blend,
    rows_bytes,
    rows_on_device,
    tile_sizes,
)

__all__ = ["MODES", "SCALE", "NotFinite", "decode", "decode_float", "encode", "to_uint8"]

DEFAULT_STATS = "fast"


def _check_stats(stats: str) -> None:
    # Checked up front: small images take one plain pass and would never look at `stats`.
    if stats not in MODES:
        raise ValueError(f"stats must be one of {MODES}, got {stats!r}")


def _check_tiling(tile: int, overlap: int | None) -> None:
    """One-line errors for tiles that would show seams or cannot slice: a tile under 64 px or
    an overlap under 8 px leaves seams of tens of 8-bit steps (the decoder sees ~138 px)."""
    # numbers.Integral: numpy's whole numbers too, as hires.job takes them
    if isinstance(tile, bool) or not isinstance(tile, numbers.Integral) or tile < LEAST_TILE \
            or tile % SCALE:
        raise ValueError(f"tile must be a whole number of px, a multiple of {SCALE} from "
                         f"{LEAST_TILE} (256 or more for no visible seams), got {tile!r}")
    if overlap is not None and (isinstance(overlap, bool)
                                or not isinstance(overlap, numbers.Integral)
                                or not SCALE <= overlap <= tile // 2 or overlap % SCALE):
        raise ValueError(f"overlap must be a multiple of {SCALE} px from {SCALE} to half the "
                         f"tile ({tile // 2}), or None for a quarter tile; got {overlap!r}")


def _layout(x: Tensor) -> Tensor:
    """Channels-last: the CPU's convolutions run about 1.4x faster that way (measured), and
    cuDNN's tensor-core ones are NHWC (NCHW maps cost a conversion around each)."""
    return x.contiguous(memory_format=torch.channels_last)


def _run_bytes(vae, t: int) -> float:
    """What one run of a `t` x `t` latent tile takes beside the kept outputs (the planner's
    estimate, so a run keeps as much as its plan priced)."""
    shape = VaeShape.from_config(dict(vae.config))
    return vae_tile_peak(shape, t * SCALE, vae.dtype.itemsize)


def _decode_strips(vae, latents: Tensor, tile: int, overlap: int | None, stats: str,
                   progress: Progress | None, spill: float = 0.0) -> Iterator[tuple[int, Tensor]]:
    """Yield (first row, float rows 3 x n x W on the VAE's device) of the image, top to bottom.

    The rows are a view of a scratch buffer: use (or change) them before asking for the next.
    """
    if latents.ndim != 4 or latents.shape[0] != 1:
        raise ValueError(f"expected latents of shape 1 x C x h x w, got {tuple(latents.shape)}")
    _check_stats(stats)
    _check_tiling(tile, overlap)
    h, w = latents.shape[-2:]
    t, o = tile_sizes(tile, overlap)
    shift = getattr(vae.config, "shift_factor", None)

    def head(box: Box) -> Tensor:
        y0, y1, x0, x1 = box
        z = latents[:, :, y0:y1, x0:x1].to(device=vae.device, dtype=torch.float32)
        z = z / vae.config.scaling_factor
        if shift is not None:
            z = z + shift
        z = _layout(z.to(vae.dtype))
        if vae.post_quant_conv is not None:
            z = vae.post_quant_conv(z)
        return z

    if h * w <= t * t:  # no more pixels than one tile: one plain pass
        with torch.no_grad():
            out = vae.decoder(head((0, h, 0, w)))[0].float()
        if progress is not None:
            progress(1, 1)
        yield 0, out
        return
    grid = Grid.cover((h, w), t, o)
    # A GPU keeps the cross-fade buffer where it has room for it (the planner counts it so).
    rows = rows_bytes(w * SCALE, h * SCALE, t * SCALE)
    home = torch.device("cpu") if vae.device.type == "cuda" and not rows_on_device(
        rows, free_memory(vae.device)) else vae.device
    with whole_image(vae.decoder, head, grid, stats, vae.device, vae.dtype, progress,
                     spill, _run_bytes(vae, t)) as tiles:
        yield from blend(grid, SCALE, 3, o, tiles.run, home)


def _each_strip(strips: Iterator[tuple[int, Tensor]], write: Callable[[int, Tensor], None]) -> None:
    """Feed every strip to `write`, closing the generator (so restoring the VAE) on errors too."""
    with closing(strips):
        for top, rows in strips:
            write(top, rows)


def _quantize_(image: Tensor, bits: int = 8) -> Tensor:
    """In place: [-1, 1] floats 3 x H x W -> H x W x 3 uint8 (uint16 with `bits=16`, a view),
    rounded like diffusers."""
    top, dtype = (255, torch.uint8) if bits == 8 else (65535, torch.uint16)
    # float32 holds every whole number below 2**24, so 65535 steps round exactly
    image.mul_(0.5).add_(0.5).clamp_(0, 1).mul_(top).round_()
    return image.to(dtype).permute(1, 2, 0)


def to_uint8(image: Tensor) -> Tensor:
    """[-1, 1] floats (3 x H x W or 1 x 3 x H x W) -> H x W x 3 uint8, as `decode` quantizes."""
    return _quantize_(image.reshape(image.shape[-3:]).float().clone())


def decode(vae, latents: Tensor, *, tile: int = 1024, overlap: int | None = None,
           stats: str = DEFAULT_STATS, progress: Progress | None = None,
           spill: float = 0.0, bits: int = 8) -> np.ndarray:
    """Decode UNet-space latents 1 x 4 x h x w into an 8h x 8w x 3 uint8 image on the CPU
    (uint16 with `bits=16`, for 16-bit files).

    Tiles are at most `tile` px squares overlapping by `overlap` px (default tile / 4, at most
    256); an image of at most tile^2 pixels decodes in one plain pass. `stats` picks how
    GroupNorms get whole-image statistics ("fast" or "exact", see `hires.vae_stats`).
    `progress(done, total)` is called after each tile run, the statistics passes included.
    `spill`: on a GPU, step outputs that do not fit its memory are kept in the CPU's, up to
    this many bytes (and what `hires.vae_stats.spill_budget` allows then).
    """
    h, w = latents.shape[-2:]
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    canvas = np.empty((h * SCALE, w * SCALE, 3), dtype=np.uint8 if bits == 8 else np.uint16)
    view = torch.from_numpy(canvas)
    bad: list[Tensor] = []  # a flag on the rows' device: no host sync per strip

    def write(top: int, rows: Tensor) -> None:
        # Quantizing makes NaN black: look before (one pass over the rows, as cheap as a copy).
        flag = rows.isfinite().logical_not_().any()
        bad[:] = [bad[0] | flag if bad else flag]
        if bits == 16:
            rows = rows.cpu()  # uint16 is a CPU dtype in torch; 8 bits quantize where rows are
        view[top:top + rows.shape[1]] = _quantize_(rows, bits)

    _each_strip(_decode_strips(vae, latents, tile, overlap, stats, progress, spill), write)
    if bad and bool(bad[0]):
        raise NotFinite(f"the VAE's output holds NaN or inf (in {dtype_name(vae.dtype)})")
    return canvas


def decode_float(vae, latents: Tensor, *, tile: int = 1024, overlap: int | None = None,
                 stats: str = DEFAULT_STATS, progress: Progress | None = None,
                 spill: float = 0.0) -> Tensor:
    """What `decode` computes, before quantizing: 1 x 3 x H x W floats in [-1, 1] on the CPU."""
    h, w = latents.shape[-2:]
    image = torch.empty(1, 3, h * SCALE, w * SCALE)

    def write(top: int, rows: Tensor) -> None:
        image[0, :, top:top + rows.shape[1]] = rows

    _each_strip(_decode_strips(vae, latents, tile, overlap, stats, progress, spill), write)
    return image


def _pixel_source(image: np.ndarray | Tensor) -> tuple[tuple[int, int], Callable[[Box], Tensor]]:
    """Image size and a function giving the [-1, 1] pixels under a latent-unit box.

    uint8 windows become floats on the VAE's device side of the copy: a quarter of the bytes
    cross, and nothing full-size is ever converted.
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an H x W x 3 uint8 array, got {image.dtype} {image.shape}")
        pixels = torch.from_numpy(image) if image.flags.writeable else None

        def window(box: Box) -> Tensor:
            y0, y1, x0, x1 = (v * SCALE for v in box)
            # (Arrays from PIL are read-only, which torch.from_numpy warns about: copy those.)
            part = pixels[y0:y1, x0:x1] if pixels is not None else torch.from_numpy(
                image[y0:y1, x0:x1].copy())
            return part.permute(2, 0, 1)[None]

        return (image.shape[0], image.shape[1]), window
    if isinstance(image, Tensor) and image.ndim == 4 and tuple(image.shape[:2]) == (1, 3):

        def window(box: Box) -> Tensor:
            y0, y1, x0, x1 = (v * SCALE for v in box)
            return image[:, :, y0:y1, x0:x1]

        return (image.shape[2], image.shape[3]), window
    raise ValueError("expected an H x W x 3 uint8 array or a 1 x 3 x H x W tensor in [-1, 1]")


def encode(vae, image: np.ndarray | Tensor, *, tile: int = 1024, overlap: int | None = None,
           stats: str = DEFAULT_STATS, progress: Progress | None = None,
           spill: float = 0.0) -> Tensor:
    """Encode an image into UNet-space latents 1 x 4 x H/8 x W/8, float32 on the VAE's device.

    `image` is H x W x 3 uint8 or 1 x 3 x H x W floats in [-1, 1], H and W multiples of 8. The
    latents are the latent distribution's mean (deterministic), scaled. Tiling as in `decode`.
    """
    _check_stats(stats)
    _check_tiling(tile, overlap)
    (height, width), window = _pixel_source(image)
    if height % SCALE or width % SCALE:
        raise ValueError(f"image size {width}x{height} is not a multiple of {SCALE}")
    h, w = height // SCALE, width // SCALE
    t, o = tile_sizes(tile, overlap)
    channels = vae.config.latent_channels

    def head(box: Box) -> Tensor:
        x = window(box)
        if vae.device.type == "cuda" and x.device.type == "cpu":
            # Through pinned memory: a strided window of a pageable array would make the host
            # wait for the GPU to drain before each upload.
            x = torch.empty(x.shape, dtype=x.dtype, pin_memory=True).copy_(x)
        x = x.to(vae.device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = x.to(torch.float32) / 127.5 - 1
        return _layout(x.to(vae.dtype))

    def tail(moments: Tensor) -> Tensor:
        if vae.quant_conv is not None:
            moments = vae.quant_conv(moments)
        return moments[:, :channels]  # the mean; the log-variance is not needed

    if h * w <= t * t:  # no more pixels than one tile: one plain pass
        with torch.no_grad():
            mean = tail(vae.encoder(head((0, h, 0, w)))).float().cpu()
        if progress is not None:
            progress(1, 1)
    else:
        mean = torch.zeros(1, channels, h, w)
        grid = Grid.cover((h, w), t, o)
        with whole_image(vae.encoder, head, grid, stats, vae.device, vae.dtype,
                         progress, spill, _run_bytes(vae, t)) as tiles:
            for top, rows in blend(grid, 1, channels, o, lambda box: tail(tiles.run(box))):
                mean[0, :, top:top + rows.shape[1]] = rows
    if not bool(mean.isfinite().all()):
        raise NotFinite(f"the VAE's encoder output holds NaN or inf (in {dtype_name(vae.dtype)})")
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:
        mean = mean - shift
    return (mean * vae.config.scaling_factor).to(vae.device)
