"""Memory-lean UNet inference at huge latents: resnets, up blocks and upsamplers in row bands
(and a ControlNet's conditioning embedding, which runs at the image's full pixel size)."""

# Why our own: diffusers' up blocks concatenate each skip connection onto the hidden state, and
# ResnetBlock2D and Upsample2D keep every intermediate (GroupNorm out, SiLU out, 2x nearest
# upsample, conv out, shortcut) as a whole-latent tensor; CPU convolutions add an output-sized
# reorder buffer. At the 16K stage's 2048^2 latent the tiny model's full-resolution up block
# (96 channels, fp32) holds several 0.5-1.6 GB of them at once: one UNet evaluation peaked at
# 8.4 GB RSS (4.5 GB here). SDXL's 320-960 channels in fp16 make each 2.7-8 GB. Here a
# GroupNorm's statistics are taken over its whole input first (exact), then norm, SiLU (and the
# nearest upsample) and the 3x3 convolution run over bands of rows, each band read with the
# convolution's halo rows, into one preallocated output; the shortcut is added in place, and
# the concatenation is only ever made one band at a time. Same arithmetic as diffusers up to
# float rounding.

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hires.parking import settle

BAND_BYTES = 64 * 2**20  # fp32 working set of one band on CPU (measured: no slower than whole)
GPU_BAND_BYTES = 2**28  # on a GPU larger bands (fewer kernel launches); 1 GiB cost 1.5 GiB at 16K
RowFn = Callable[[int, int], Tensor]  # rows [lo, hi) of a conv input that is made band by band
Empty = Callable[[tuple[int, ...], torch.dtype, torch.device], Tensor]  # where an output goes


@dataclass
class Stacked:
    """The channel concatenation of `parts` (N x C_i x H x W each), read band by band."""

    parts: list[Tensor]
    device: torch.device | None = None  # where the bands are computed: the first part's if None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        n, _, h, w = self.parts[0].shape
        return n, sum(p.shape[1] for p in self.parts), h, w

    @property
    def like(self) -> Tensor:
        """A tensor of the compute device and dtype, for outputs made from these bands."""
        first = self.parts[0]
        if self.device is None or first.device == self.device:
            return first
        return torch.empty(0, dtype=first.dtype, device=self.device)

    def rows(self, lo: int, hi: int) -> Tensor:
        # Parts parked on the CPU (hires.strategy.parked_skips) come over one band at a time.
        device = self.device or self.parts[0].device
        if device.type != "cpu" and any(p.device.type == "cpu" for p in self.parts):
            settle()  # a band of rows is strided: torch reads it on the CPU, once it has landed
        bands = [p[:, :, lo:hi].to(device, non_blocking=True) for p in self.parts]
        return bands[0] if len(bands) == 1 else torch.cat(bands, dim=1)


def band_rows(like: Tensor, channels: int, width: int, reach: int = 0) -> int:
    """Rows per band: about BAND_BYTES of fp32, and at least the conv's halo.

    The halo costs only norm and activation work (the conv computes each output row once), so
    a band as small as its halo (at most 2x that work) beats the memory of a bigger one: the
    16K stage's global pass dilates by 64, a halo of 128 rows.
    """
    budget = BAND_BYTES if like.device.type == "cpu" else GPU_BAND_BYTES
    return max(budget // max(1, channels * width * 4), reach, 1)


def group_scale_shift(x: Stacked, norm: nn.GroupNorm) -> tuple[Tensor, Tensor]:
    """GroupNorm of `x` as a per-channel affine map (scale, shift), N x C x 1 x 1 in fp32.

    Statistics are exact over the whole input (two passes, fp64 sums where the device has
    fp64), read band by band so no whole-size temporary is made.
    """
    n, c, h, w = x.shape
    g, step = norm.num_groups, band_rows(x.like, c, w)
    count = (c // g) * h * w
    acc = torch.float32 if x.like.device.type == "mps" else torch.float64  # MPS: no fp64

    def grouped(a: int) -> Tensor:
        return x.rows(a, a + step).float().reshape(n, g, -1)

    mean = sum(grouped(a).sum(-1, dtype=acc) for a in range(0, h, step)) / count
    m2 = sum((grouped(a) - mean[..., None].float()).square().sum(-1, dtype=acc)
             for a in range(0, h, step))
    rstd = torch.rsqrt(m2 / count + norm.eps)
    scale = rstd.repeat_interleave(c // g, dim=1).float()
    shift = (-mean * rstd).repeat_interleave(c // g, dim=1).float()
    if norm.affine:
        shift = shift * norm.weight.float() + norm.bias.float()
        scale = scale * norm.weight.float()
    return scale.view(n, c, 1, 1), shift.view(n, c, 1, 1)


def banded_conv(conv: nn.Conv2d, rows: RowFn, shape: tuple[int, int, int, int],
                like: Tensor, output_to: Empty | None = None) -> Tensor:
    """A stride-1 conv over an input of `shape` (N, C, H, W) that `rows(lo, hi)` makes; its
    output in `output_to(shape, dtype, device)` if given, else on `like`'s device."""
    n, c, height, width = shape
    (kh, kw), (dh, dw), (ph, pw) = conv.kernel_size, conv.dilation, conv.padding
    reach = dh * (kh - 1)
    out_h, out_w = height + 2 * ph - reach, width + 2 * pw - dw * (kw - 1)
    size = (n, conv.out_channels, out_h, out_w)
    out = like.new_empty(size) if output_to is None else output_to(size, like.dtype, like.device)
    step = band_rows(like, c, width, reach)
    for a in range(0, out_h, step):
        b = min(a + step, out_h)
        lo, hi = a - ph, b - ph + reach  # input rows this band reads; outside is zero padding
        band = rows(max(lo, 0), min(hi, height))
        if lo < 0 or hi > height:
            band = F.pad(band, (0, 0, max(0, -lo), max(0, hi - height)))
        out[:, :, a:b] = F.conv2d(band, conv.weight, conv.bias, 1, (0, pw), conv.dilation,
                                  conv.groups)
    return out


def _norm_act(band: Tensor, scale: Tensor, shift: Tensor, act: nn.Module, dtype) -> Tensor:
    h = torch.addcmul(shift, band.float(), scale)
    h = F.silu(h, inplace=True) if isinstance(act, nn.SiLU) else act(h)
    return h.to(dtype)


def norm_act_conv(x: Stacked, norm: nn.GroupNorm, act: nn.Module, conv: nn.Conv2d) -> Tensor:
    """conv(act(norm(x))) without a whole-size norm or activation output."""
    scale, shift = group_scale_shift(x, norm)
    like = x.like

    def rows(lo: int, hi: int) -> Tensor:
        return _norm_act(x.rows(lo, hi), scale, shift, act, like.dtype)

    return banded_conv(conv, rows, x.shape, like)


def keeps_shape(conv: nn.Conv2d, channels: int) -> bool:
    """Whether `conv` maps `channels` channels to as many, at the same height and width."""
    (kh, kw), (dh, dw), (ph, pw) = conv.kernel_size, conv.dilation, conv.padding
    return (_plain_conv(conv) and conv.in_channels == conv.out_channels == channels
            and 2 * ph == dh * (kh - 1) and 2 * pw == dw * (kw - 1))


def norm_act_conv_(x: Tensor, norm: nn.GroupNorm, act: nn.Module, conv: nn.Conv2d) -> Tensor:
    """conv(act(norm(x))) written over `x` (a conv that `keeps_shape`): no second whole-size
    tensor. Each band's output replaces rows that no later band reads, but the `padding` rows
    above the next band, which are kept aside before they are overwritten."""
    scale, shift = group_scale_shift(Stacked([x]), norm)
    n, c, height, width = x.shape
    kh, dh, (ph, pw) = conv.kernel_size[0], conv.dilation[0], conv.padding
    step = band_rows(x, c, width, dh * (kh - 1))
    kept = x[:, :, :0].clone()  # the original rows [a - ph, a) above the band at a
    for a in range(0, height, step):
        b = min(a + step, height)
        hi = min(b + ph, height)
        band = _norm_act(torch.cat([kept, x[:, :, a:hi]], dim=2), scale, shift, act, x.dtype)
        band = F.pad(band, (0, 0, ph - kept.shape[2], b + ph - hi))
        out = F.conv2d(band, conv.weight, conv.bias, 1, (0, pw), conv.dilation, conv.groups)
        kept = x[:, :, max(b - ph, 0):b].clone()
        x[:, :, a:b] = out
    return x


def _plain_conv(conv: nn.Module | None) -> bool:
    return (isinstance(conv, nn.Conv2d) and conv.stride == (1, 1)
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str))


def resnet_supported(block: nn.Module, temb: Tensor | None) -> bool:
    """Whether `resnet` computes this ResnetBlock2D exactly (SDXL's resnets all qualify)."""
    return (not block.training and block.time_embedding_norm == "default"
            and block.upsample is None and block.downsample is None
            and (temb is None or block.time_emb_proj is not None)
            and isinstance(block.norm1, nn.GroupNorm) and isinstance(block.norm2, nn.GroupNorm)
            and _plain_conv(block.conv1) and _plain_conv(block.conv2))


def resnet(block: nn.Module, x: Stacked, temb: Tensor | None) -> Tensor:
    """ResnetBlock2D.forward on the concatenation `x`, band by band."""
    h = norm_act_conv(x, block.norm1, block.nonlinearity, block.conv1)
    if temb is not None:
        t = temb if block.skip_time_act else block.nonlinearity(temb)
        h += block.time_emb_proj(t)[:, :, None, None]
    # No dropout at inference. The second conv overwrites h where its shape allows.
    if keeps_shape(block.conv2, h.shape[1]):
        out = norm_act_conv_(h, block.norm2, block.nonlinearity, block.conv2)
    else:
        out = norm_act_conv(Stacked([h]), block.norm2, block.nonlinearity, block.conv2)
    del h
    n, c, height, width = x.shape
    step = band_rows(out, c, width)
    for a in range(0, height, step):
        band = x.rows(a, a + step)
        out[:, :, a:a + step] += band if block.conv_shortcut is None else block.conv_shortcut(band)
    if block.output_scale_factor != 1:
        out /= block.output_scale_factor
    return out


def lean_resnet(block: nn.Module, original: Callable) -> Callable:
    """A ResnetBlock2D forward with the same result and no whole-size temporaries; an input
    parked on the CPU (hires.strategy.parked_skips) is read band by band."""

    def forward(x: Tensor, temb: Tensor | None = None, *args, **kwargs) -> Tensor:
        device = block.conv1.weight.device
        if args or kwargs or not resnet_supported(block, temb):
            return original(x.to(device, non_blocking=True), temb, *args, **kwargs)
        return resnet(block, Stacked([x], device=device), temb)

    forward.reads_parked = True
    return forward


def lean_up_block(block: nn.Module, original: Callable) -> Callable:
    """An UpBlock2D / CrossAttnUpBlock2D forward that never concatenates a skip whole."""

    def forward(hidden_states: Tensor, res_hidden_states_tuple: tuple[Tensor, ...],
                temb: Tensor | None = None, *args, upsample_size: int | None = None,
                **attn_kwargs) -> Tensor:
        freeu = all(getattr(block, k, None) for k in ("s1", "s2", "b1", "b2"))
        if (args or freeu or block.training
                or not all(resnet_supported(r, temb) for r in block.resnets)):
            return original(hidden_states, res_hidden_states_tuple, temb, *args,
                            upsample_size=upsample_size, **attn_kwargs)
        attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
        skips = list(res_hidden_states_tuple)
        for res, attn in zip(block.resnets, attentions, strict=True):
            # The block's input may wait on the CPU too (hires.strategy.parked_skips).
            hidden_states = resnet(res, Stacked([hidden_states, skips.pop()],
                                                device=res.conv1.weight.device), temb)
            if attn is not None:
                hidden_states = attn(hidden_states, return_dict=False, **attn_kwargs)[0]
        for upsampler in block.upsamplers or ():
            hidden_states = upsampler(hidden_states, upsample_size)
        return hidden_states

    forward.reads_parked = True  # skips parked on the CPU are read band by band
    return forward


def lean_upsample(block: nn.Module, original: Callable) -> Callable:
    """An Upsample2D forward (2x nearest, then conv) that never holds the upsampled input.

    Its output goes where `block.output_to` (if set: hires.strategy.parked_skips) puts it.
    """
    conv = block.conv if block.name == "conv" else getattr(block, "Conv2d_0", None)

    def forward(x: Tensor, output_size=None, *args, **kwargs) -> Tensor:
        if (args or kwargs or output_size is not None or block.norm is not None
                or block.use_conv_transpose or not block.interpolate or not block.use_conv
                or not _plain_conv(conv)):
            return original(x, output_size, *args, **kwargs)

        def rows(lo: int, hi: int) -> Tensor:  # rows [lo, hi) of the 2x upsampled input
            src = F.interpolate(x[:, :, lo // 2:(hi + 1) // 2], scale_factor=2.0, mode="nearest")
            return src[:, :, lo % 2:lo % 2 + hi - lo]

        n, c, height, width = x.shape
        return banded_conv(conv, rows, (n, c, 2 * height, 2 * width), x,
                           getattr(block, "output_to", None))

    forward.writes_to = True
    return forward


def _embedding_reach(block: nn.Module) -> tuple[int, int] | None:
    """(total stride, pixel rows each side an output row reads) of a ControlNet conditioning
    embedding made of zero-padded convs; None for a layout `lean_embedding` cannot band."""
    convs = [block.conv_in, *block.blocks, block.conv_out]
    stride, reach = 1, 0
    for conv in convs:
        if not (_plain_conv(conv) or conv.stride == (2, 2) and conv.padding_mode == "zeros"):
            return None
        (k, _), (d, _), (p, _) = conv.kernel_size, conv.dilation, conv.padding
        if k % 2 == 0 or p != d * (k // 2) or conv.stride[0] != conv.stride[1]:
            return None
        reach += p * stride
        stride *= conv.stride[0]
    return stride, reach


def lean_embedding(block: nn.Module, original: Callable) -> Callable:
    """A ControlNetConditioningEmbedding forward over bands of output rows, each computed from
    its pixel rows and a halo as deep as the convs reach (exact: every band starts on the
    stride grid, and the rows the band's edge spoils lie in the halo, which is dropped).

    At the 16K stage its 16-channel full-resolution maps are 8.6 GB each in fp16.
    """
    layout = _embedding_reach(block)

    def forward(cond: Tensor, *args, **kwargs) -> Tensor:
        n, _, height, width = cond.shape
        if args or kwargs or layout is None or block.training or height % layout[0]:
            return original(cond, *args, **kwargs)
        stride, reach = layout
        halo, out_h = -(-reach // stride), height // stride
        step = max(1, band_rows(cond, block.conv_in.out_channels, width) // stride)
        if step >= out_h:
            return original(cond)
        out = None
        for a in range(0, out_h, step):
            b = min(a + step, out_h)
            lo, hi = max(0, a - halo), min(out_h, b + halo)
            part = original(cond[:, :, lo * stride:hi * stride])
            if out is None:
                out = part.new_empty((n, part.shape[1], out_h, part.shape[3]))
            out[:, :, a:b] = part[:, :, a - lo:b - lo]
            del part
        return out

    return forward


def restore_forwards(patched: list[tuple[nn.Module, Callable | None]]) -> None:
    """Undo `module.forward = ...` patches: (module, the instance's own forward before, if any)."""
    for m, before in patched:
        if before is None:
            del m.forward
        else:
            m.forward = before


@contextmanager
def lean_unet(unet: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Run the UNet's resnets, up blocks and upsamplers band by band while a huge stage runs
    (a ControlNet's resnets and conditioning embedding too)."""
    from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.unets.unet_2d_blocks import CrossAttnUpBlock2D, UpBlock2D
    from diffusers.models.upsampling import Upsample2D

    makers = {ResnetBlock2D: lean_resnet, Upsample2D: lean_upsample,
              UpBlock2D: lean_up_block, CrossAttnUpBlock2D: lean_up_block,
              ControlNetConditioningEmbedding: lean_embedding}
    patched = []
    try:
        for m in unet.modules() if enabled else ():
            make = makers.get(type(m))
            if make is None or hasattr(m, "_diffusers_hook"):  # hooked: leave its forward be
                continue
            patched.append((m, m.__dict__.get("forward")))
            m.forward = make(m, m.forward)
        yield
    finally:
        restore_forwards(patched)
