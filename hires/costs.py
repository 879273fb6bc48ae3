"""What a stage costs, from the model's config alone: peak device memory, FLOPs, transfers.

The memory model walks the UNet's forward pass block by block, as diffusers runs it, keeping
the tensors that stay alive (skip connections, the block's input) and adding each block's
internal peak (e.g. a resnet's GroupNorm and SiLU outputs, a feed-forward's 8x-wide GEGLU
projection). Row bands and feed-forward chunks cap those peaks at a band's or a chunk's size.
`hires.memsim` runs the real model on a simulated GPU to check it (tests/test_costs.py,
benchmarks/memory.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from hires.gpus import FP32_SHARE
from hires.lean import GPU_BAND_BYTES
from hires.strategy import Strategy
from hires.vae_attention import CONTEXT_CELLS, GLOBAL_TOKENS, SWEEP_BLOCK, SWEEP_REACH, landmarks
from hires.vae_cost import tiled_cost
from hires.vae_stats import budget_from_free, spill_budget

FF_TOKENS = 16384  # tokens per chunk (hires.token_chunks.CHUNK_TOKENS)
LINFUSION_WORK = 256 << 20  # fp32 work buffers of one LinFusion call on a GPU (linfusion.py)
HOST_LINK = 25e9  # bytes/s between host and GPU (PCIe 4 x16 in practice) for offload traffic


@dataclass(frozen=True)
class UNetShape:
    """The parts of a UNet2DConditionModel config that set its memory and FLOPs."""

    channels: tuple[int, ...]  # per level, top (full resolution) first
    layers: int  # resnets per down block (up blocks have one more)
    depth: tuple[int, ...]  # transformer blocks per level; 0: no attention there
    in_channels: int
    out_channels: int
    cross_dim: int
    text_tokens: int = 77
    heads: tuple[int, ...] = ()
    linfusion: bool = True
    param_bytes: int = 0  # weights in the run dtype, LinFusion included
    block_param_bytes: tuple[int, ...] = ()  # down blocks, mid block, up blocks: weights
    outer_param_bytes: int = 0  # weights outside those blocks (embeddings, conv in/out)

    @classmethod
    def from_config(cls, config: dict[str, Any], *, param_bytes: int = 0,
                    block_param_bytes: tuple[int, ...] = (), outer_param_bytes: int = 0,
                    linfusion: bool = True) -> UNetShape:
        types = config["down_block_types"]
        tl = config.get("transformer_layers_per_block", 1)
        tl = [tl] * len(types) if isinstance(tl, int) else list(tl)
        depth = tuple(n if "CrossAttn" in t else 0 for t, n in zip(types, tl, strict=True))
        heads = config.get("attention_head_dim", 8)
        heads = [heads] * len(types) if isinstance(heads, int) else list(heads)
        return cls(tuple(config["block_out_channels"]), config["layers_per_block"], depth,
                   config["in_channels"], config["out_channels"],
                   config["cross_attention_dim"], heads=tuple(heads), linfusion=linfusion,
                   param_bytes=param_bytes, block_param_bytes=block_param_bytes,
                   outer_param_bytes=outer_param_bytes)

    @classmethod
    def of(cls, unet: Any) -> UNetShape:
        """The shape of a built UNet (any device, meta included), LinFusion or not."""
        from hires.memsim import module_bytes

        blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
        sizes = [module_bytes(b) for b in blocks]
        total = module_bytes(unet)
        linfusion = any(type(m).__name__ == "LinearAttention" for m in unet.modules())
        return cls.from_config(dict(unet.config), param_bytes=total,
                               block_param_bytes=tuple(sizes),
                               outer_param_bytes=total - sum(sizes),
                               linfusion=linfusion)


@dataclass(frozen=True)
class ControlShape:
    """A ControlNet: its down and mid blocks (shaped as a UNet's, no up path) and the
    conditioning embedding that runs at the image's pixel size."""

    net: UNetShape
    embedding: tuple[int, ...] = (16, 32, 96, 256)  # conditioning_embedding_out_channels
    cond_channels: int = 3

    @property
    def param_bytes(self) -> int:
        return self.net.param_bytes

    @classmethod
    def from_config(cls, config: dict[str, Any], **kwargs: Any) -> ControlShape:
        net = UNetShape.from_config({"out_channels": config["in_channels"], **config}, **kwargs)
        return cls(net, tuple(config.get("conditioning_embedding_out_channels")
                              or (16, 32, 96, 256)), config.get("conditioning_channels", 3))

    @classmethod
    def of(cls, controlnet: Any) -> ControlShape:
        """The shape of a built ControlNetModel (any device, meta included)."""
        from hires.memsim import module_bytes

        sizes = [module_bytes(b) for b in (*controlnet.down_blocks, controlnet.mid_block)]
        total = module_bytes(controlnet)
        linfusion = any(type(m).__name__ == "LinearAttention" for m in controlnet.modules())
        return cls.from_config(dict(controlnet.config), param_bytes=total,
                               block_param_bytes=tuple(sizes),
                               outer_param_bytes=total - sum(sizes), linfusion=linfusion)


class _Walk:
    """Live bytes through one forward pass, and their peak (one CFG batch of `batch`)."""

    def __init__(self, shape: UNetShape, height: int, width: int, batch: int, dtype_bytes: int,
                 strategy: Strategy) -> None:
        self.s, self.h, self.w = shape, height, width
        self.unit = batch * dtype_bytes  # bytes of one channel-pixel across the batch
        self.batch, self.strategy = batch, strategy
        self.live = self.peak = 0
        self.weights = 0  # streamed weights on the GPU now (sequential offload)

    def block(self, index: int) -> None:
        """Block `index` (down, mid, up order) runs now; under sequential offload its weights
        are the ones on the GPU."""
        if self.strategy.weights == "sequential" and self.s.block_param_bytes:
            self.weights = self.s.block_param_bytes[index]

    def pixels(self, level: int) -> int:
        return -(-self.h // 2**level) * -(-self.w // 2**level)

    def size(self, channels: int, level: int) -> int:
        return channels * self.pixels(level) * self.unit

    def touch(self, extra: int = 0) -> None:
        self.peak = max(self.peak, self.live + self.weights + extra)

    def band(self, channels: int, level: int) -> int:
        """Working set of one row band: its input, the fp32 norm/activation copies, its output.

        A band is about GPU_BAND_BYTES of fp32 (hires.lean.band_rows), or the whole tensor;
        about two of them live at once (fitted on the simulated GPU: 1K-16K, SDXL).
        """
        whole = channels * self.pixels(level) * self.batch * 4
        return 2 * min(GPU_BAND_BYTES, whole)

    def resnet(self, c_in: int, c_out: int, level: int) -> int:
        """Peak above the live set inside one resnet whose input is live; returns its output."""
        i, o = self.size(c_in, level), self.size(c_out, level)
        shortcut = o if c_in != c_out else 0
        if self.strategy.row_bands:  # the second conv writes over the first's output
            extra = o + self.band(max(c_in, c_out), level)
        else:
            extra = max(2 * i, i + o, 3 * o + shortcut)
        self.touch(extra)
        return o

    def transformer(self, channels: int, level: int, blocks: int) -> None:
        """Peak above the live set inside one Transformer2DModel whose input is live."""
        c = self.size(channels, level)
        tokens = self.pixels(level)
        if self.strategy.ff_chunks and tokens > FF_TOKENS and self.s.linfusion and blocks:
            # hires.token_chunks: a block holds its input, its output and one chunk's work
            # (the GEGLU's 8x projection and its halves, the norms and sums); around the
            # blocks, the model's input and output projections with their layout copies.
            chunk = 20 * channels * FF_TOKENS * self.unit
            self.touch(max(3 * c, 2 * c + chunk))
            return
        ff = 16 * c  # GEGLU: the 8x projection, GELU of its gate half, their product
        if self.strategy.ff_chunks and tokens > FF_TOKENS:
            ff = 16 * channels * FF_TOKENS * self.unit + 2 * c  # a chunk, the outputs, the cat
        attn = 5 * c + (min(LINFUSION_WORK, c // self.unit * self.batch * 4)
                        if self.s.linfusion else 0)
        # Around the blocks: the residual input, the projected tokens, the block's norm output.
        self.touch(2 * c + max(ff, attn) + (c if blocks else 0))

    def down_block(self, c_in: int, c: int, level: int, at_once: bool = False) -> list[int]:
        """A down block's resnets (and transformers), then its downsampler unless it is the
        last level; each output stays alive (a skip) but, `at_once`, those the block's next
        resnet reads from the CPU (hires.strategy.parked_skips). Returns their bytes."""
        shape = self.s
        made = []
        for layer in range(shape.layers):
            out = self.resnet(c_in, c, level)
            self.live += out
            if shape.depth[level]:
                self.transformer(c, level, shape.depth[level])
            made.append(out)
            if at_once and layer < shape.layers - 1:
                self.live -= out
            c_in = c
        if level < len(shape.channels) - 1:
            out = self.size(c, level + 1)
            self.touch(out)
            self.live += out
            made.append(out)
        return made

    def upsample(self, channels: int, level: int, parked: bool = False) -> int:
        """Nearest 2x then a conv, from `level` to `level - 1`; returns the output's bytes.
        `parked`: the output is written to the CPU band by band (hires.lean.lean_upsample)."""
        out = self.size(channels, level - 1)
        if self.strategy.row_bands:
            self.touch((0 if parked else out) + self.band(channels, level - 1))
        else:
            self.touch(2 * out)
        return out


def unet_peak_bytes(shape: UNetShape, height: int, width: int, strategy: Strategy,
                    dtype_bytes: int = 2, *, control: bool = False) -> int:
    """Estimated peak device bytes of one guided UNet evaluation at a latent of this size,
    the UNet's weights as `strategy.weights` keeps them included, nothing else.

    With `control`, a ControlNet's residuals wait on the GPU when the call starts (on the CPU
    with parked skips, but conv_in's and the mid block's) and go as the down blocks add them
    (hires.controlnet.residuals_added).
    """
    batch = 1 if strategy.split_cfg else 2
    walk = _Walk(shape, height, width, batch, dtype_bytes, strategy)
    ch, layers, levels = shape.channels, shape.layers, len(shape.channels)
    park = strategy.park_skips
    # Parked as made (hires.strategy.applied): conv_in's output, a down block's inner outputs.
    at_once = park and strategy.row_bands and not control
    first = walk.size(ch[0], 0)  # conv_in's output: a skip and block 0's input
    mid = walk.size(ch[-1], levels - 1)
    if control:
        walk.live += first + mid + (0 if park else _skip_bytes(shape, height, width,
                                                                dtype_bytes) * batch)
    # Down path: every resnet (or attention) output and downsample output is a skip.
    skips: list[int] = [first]
    walk.touch(first)
    walk.live += 0 if at_once else first
    c_prev, given = ch[0], 0 if at_once else first  # the block's input; parked: its GPU copy
    for level, c in enumerate(ch):
        walk.block(level)
        made = walk.down_block(c_prev, c, level, at_once)
        c_prev = c
        skips += made
        if control:  # conv_in's residual is added first, then the block's (a parked one
            walk.live -= first if level == 0 else 0  # comes over first)
            walk.touch(max(made) if park else made[-1])
            walk.live -= 0 if park else sum(made)
        if park:  # once the block returns its skips go to the CPU; its output stays
            still = made[shape.layers - 1:] if at_once else made  # inner ones went as made
            walk.live -= sum(still) - made[-1] + given  # conv_in's output: parked at once
            given = made[-1]
    # Mid block: resnet, attention, resnet at the lowest level.
    low = levels - 1
    walk.block(levels)
    walk.live += walk.resnet(ch[low], ch[low], low)
    walk.transformer(ch[low], low, shape.depth[low])
    walk.touch(walk.resnet(ch[low], ch[low], low))
    if control:
        walk.live -= mid
    if park:
        walk.live -= given
    # Up path: each block takes back layers + 1 skips, deepest first.
    c_h = ch[low]
    parked_input = False  # the up block's input waits on the CPU (parked_skips, row bands)
    for level in reversed(range(levels)):
        walk.block(2 * levels - level)
        c = ch[level]
        mine = skips[-(layers + 1):]
        del skips[-(layers + 1):]
        moved = sum(mine) if park and not strategy.row_bands else 0
        walk.live += moved  # parked skips come back whole for a diffusers up block
        first_input = 0 if parked_input else walk.size(c_h, level)
        hidden = 0  # the block's running hidden state, once it differs from its input
        for skip in reversed(mine):
            c_skip = skip // walk.pixels(level) // walk.unit
            if strategy.row_bands:
                out = walk.resnet(c_h + c_skip, c, level)
            else:
                cat = walk.size(c_h + c_skip, level)
                walk.live += cat - hidden
                out = walk.resnet(c_h + c_skip, c, level)
                walk.live -= cat
                hidden = 0
            walk.live += out - hidden
            hidden = out
            if shape.depth[level]:
                walk.transformer(c, level, shape.depth[level])
            c_h = c
        if level > 0:
            parked_input = park and strategy.row_bands
            up = walk.upsample(c, level, parked_input)
            walk.live += (0 if parked_input else up) - hidden - first_input
        else:
            walk.live -= first_input
        walk.live -= moved + (0 if park else sum(mine))
    # Out: GroupNorm, SiLU, conv to the latent channels.
    walk.weights = 0
    walk.touch(walk.size(ch[0], 0))  # the norm's output beside the up path's (SiLU in place)
    if strategy.weights == "sequential" and shape.block_param_bytes:
        return shape.outer_param_bytes + walk.peak
    return shape.param_bytes + walk.peak


def controlnet_peak_bytes(control: ControlShape, height: int, width: int, strategy: Strategy,
                         dtype_bytes: int = 2) -> int:
    """Estimated peak device bytes of one guided ControlNet evaluation at a latent of this
    size (its weights as `strategy.weights` keeps them included; the control image is the
    stage's), and what it leaves for the UNet call is counted there (unet_peak_bytes)."""
    shape = control.net
    batch = 1 if strategy.split_cfg else 2
    walk = _Walk(shape, height, width, batch, dtype_bytes, strategy)
    ch, levels = shape.channels, len(shape.channels)
    park = strategy.park_skips
    first = walk.size(ch[0], 0)
    # The conditioning embedding at pixel size: its widest maps are the first level's (conv,
    # then SiLU's copy); with row bands one band of them at a time.
    e0 = control.embedding[0] * walk.pixels(0) * 64 * walk.unit
    walk.touch(first + (2 * min(GPU_BAND_BYTES * walk.unit // 4, e0) if strategy.row_bands
                        else 2 * e0))
    walk.live += first  # the embedding; then conv_in's output, and their sum
    walk.touch(2 * first)
    walk.live += first  # diffusers' forward holds the embedding to its end, beside the sum
    skips: list[int] = [first]
    c_prev, given = ch[0], first
    for level, c in enumerate(ch):
        walk.block(level)
        made = walk.down_block(c_prev, c, level)
        c_prev = c
        skips += made
        if park:
            walk.live -= sum(made) - made[-1] + (given if level else 0)
            given = made[-1]
    low = levels - 1
    walk.block(levels)
    walk.live += walk.resnet(ch[low], ch[low], low)
    walk.transformer(ch[low], low, shape.depth[low])
    out = walk.resnet(ch[low], ch[low], low)
    walk.live += out
    if park:
        walk.live -= given
    # Zero convs: each output is written over the skip it read (parked: both come and go).
    walk.weights = 0
    walk.touch(max(skips) * (2 if park else 1) + out)
    if strategy.weights == "sequential" and shape.block_param_bytes:
        return shape.outer_param_bytes + walk.peak
    return shape.param_bytes + walk.peak


def denoise_peak_bytes(unet: UNetShape, control: ControlShape | None, height: int, width: int,
                       strategy: Strategy, dtype_bytes: int = 2) -> int:
    """Peak device bytes of one guided evaluation: the UNet's, or with a ControlNet the larger
    of its call (the UNet's weights held) and the UNet's (its weights and residuals held);
    weights as `strategy.weights` keeps them, the control image not included."""
    peak = unet_peak_bytes(unet, height, width, strategy, dtype_bytes,
                           control=control is not None)
    if control is None:
        return peak
    streamed = strategy.weights == "sequential"
    held = control.net.outer_param_bytes if streamed else control.param_bytes
    unet_held = unet.outer_param_bytes if streamed else unet.param_bytes
    return max(peak + held, unet_held + controlnet_peak_bytes(control, height, width, strategy,
                                                              dtype_bytes))


# ---------------------------------------------------------------------------------------------
# FLOPs (multiply-adds x 2), from the config: convs, linears and LinFusion's attention


def _down_mid_macs(shape: UNetShape, height: int, width: int) -> tuple[float, list]:
    """Multiply-adds of conv_in, the down blocks and the mid block; the skips' (channels,
    level), conv_in's first."""
    ch, layers, levels = shape.channels, shape.layers, len(shape.channels)

    def px(level: int) -> int:
        return -(-height // 2**level) * -(-width // 2**level)

    macs = 9 * shape.in_channels * ch[0] * px(0)
    c_prev = ch[0]
    skips = [(ch[0], 0)]
    for level, c in enumerate(ch):
        for _ in range(layers):
            macs += _resnet_macs(c_prev, c, px(level)) + (
                _transformer_macs(shape, c, level, px(level), shape.depth[level])
                if shape.depth[level] else 0)
            skips.append((c, level))
            c_prev = c
        if level < levels - 1:
            macs += 9 * c * c * px(level + 1)
            skips.append((c, level + 1))
    low = levels - 1
    macs += 2 * _resnet_macs(ch[low], ch[low], px(low)) + _transformer_macs(
        shape, ch[low], low, px(low), shape.depth[low] or 1)
    return macs, skips


def _resnet_macs(c_in: int, c: int, px: int) -> float:
    return px * (9 * c_in * c + 9 * c * c + (c_in * c if c_in != c else 0))


def _transformer_macs(shape: UNetShape, c: int, level: int, n: int, depth: int) -> float:
    heads = shape.heads[level] if shape.heads else 8
    per_block = n * (4 * c * c + 4 * c * (c // 16 if shape.linfusion else 0)  # attn1
                     + 2 * c * (c // heads if shape.linfusion else n)  # its attention
                     + 2 * c * c + 2 * c * shape.text_tokens  # attn2, 77 text tokens
                     + 12 * c * c)  # GEGLU feed-forward
    per_block += 2 * shape.text_tokens * shape.cross_dim * c  # attn2 keys and values
    return 2 * n * c * c + depth * per_block


def unet_flops(shape: UNetShape, height: int, width: int) -> float:
    """FLOPs of one UNet evaluation of one batch item at a latent of this size."""
    ch, layers, levels = shape.channels, shape.layers, len(shape.channels)

    def px(level: int) -> int:
        return -(-height // 2**level) * -(-width // 2**level)

    macs, skips = _down_mid_macs(shape, height, width)
    c_h = ch[-1]
    for level in reversed(range(levels)):
        c = ch[level]
        for _ in range(layers + 1):
            c_skip, _ = skips.pop()
            macs += _resnet_macs(c_h + c_skip, c, px(level)) + (
                _transformer_macs(shape, c, level, px(level), shape.depth[level])
                if shape.depth[level] else 0)
            c_h = c
        if level > 0:
            macs += 9 * c * c * px(level - 1)
    macs += 9 * ch[0] * shape.out_channels * px(0)
    return 2.0 * macs


def controlnet_flops(control: ControlShape, height: int, width: int) -> float:
    """FLOPs of one ControlNet evaluation of one batch item at a latent of this size: the
    conditioning embedding (at 8x the latent's size), down and mid blocks, zero convs."""
    shape = control.net
    macs, skips = _down_mid_macs(shape, height, width)
    for c, level in skips:  # zero convs: 1x1, c to c
        macs += c * c * -(-height // 2**level) * -(-width // 2**level)
    low = len(shape.channels) - 1
    macs += shape.channels[low] ** 2 * -(-height // 2**low) * -(-width // 2**low)
    # The embedding: 3x3 convs, each stride-2 one halving the rows and columns.
    e, (h, w) = control.embedding, (8 * height, 8 * width)
    macs += 9 * control.cond_channels * e[0] * h * w
    for c_in, c_out in zip(e, e[1:], strict=False):
        macs += 9 * c_in * c_in * h * w
        h, w = -(-h // 2), -(-w // 2)
        macs += 9 * c_in * c_out * h * w
    macs += 9 * e[-1] * shape.channels[0] * h * w
    return 2.0 * macs


@dataclass(frozen=True)
class VaeShape:
    """The parts of an AutoencoderKL config that set its memory and FLOPs."""

    channels: tuple[int, ...]  # block_out_channels, full resolution first
    layers: int
    latent_channels: int = 4
    image_channels: int = 3
    param_bytes: int = 0

    @classmethod
    def from_config(cls, config: dict[str, Any], *, param_bytes: int = 0) -> VaeShape:
        return cls(tuple(config["block_out_channels"]), config["layers_per_block"],
                   config.get("latent_channels", 4), config.get("out_channels", 3),
                   param_bytes)


def vae_flops(vae: VaeShape, width: int, height: int, *, decode: bool, tile: int = 1024) -> float:
    """FLOPs of one decode (latents to a width x height image) or encode, `tile` px tiles.

    Convolutions as a plain pass runs them; the mid-block attention as `hires.vae_attention`
    runs it: whole (quadratic in latent pixels) up to GLOBAL_TOKENS, else once per token (the
    sweep), against the tokens around its block, the context cells and the landmarks.
    """
    ch, levels = vae.channels, len(vae.channels)
    top = width * height
    tokens = top / 64
    if tokens <= GLOBAL_TOKENS:
        keys = tokens
    else:
        keys = min(tokens, (SWEEP_BLOCK + 2 * SWEEP_REACH) ** 2 + CONTEXT_CELLS
                   + landmarks((height // 8, width // 8)))
    attention = 2 * 2 * tokens * keys * ch[-1]  # q.k and weights.v

    def px(level: int) -> float:  # level 0: full resolution
        return top / 4**level

    def resnet(c_in: int, c: int, level: int) -> float:
        return px(level) * (9 * c_in * c + 9 * c * c + (c_in * c if c_in != c else 0))

    low = levels - 1
    c_low = ch[-1]
    macs = 2 * resnet(c_low, c_low, low) + 4 * c_low * c_low * px(low)  # mid block
    if decode:
        macs += 9 * vae.latent_channels * c_low * px(low) + 9 * ch[0] * vae.image_channels * top
        c_prev = c_low
        for level in reversed(range(levels)):
            c = ch[level]
            for _ in range(vae.layers + 1):
                macs += resnet(c_prev, c, level)
                c_prev = c
            if level > 0:
                macs += 9 * c * c * px(level - 1)
    else:
        macs += 9 * vae.image_channels * ch[0] * top + 9 * c_low * 2 * vae.latent_channels * px(
            low)
        c_prev = ch[0]
        for level, c in enumerate(ch):
            for _ in range(vae.layers):
                macs += resnet(c_prev, c, level)
                c_prev = c
            if level < levels - 1:
                macs += 9 * c * c * px(level + 1)
    return 2.0 * macs + attention


def vae_attention_bytes(vae: VaeShape, width: int, height: int, dtype_bytes: int = 2) -> int:
    """Device bytes of the whole-image mid-block attention (0 above GLOBAL_TOKENS: the sweep
    keeps its maps in the CPU's memory and works a block at a time, less than a tile's run).

    Its gathered float32 input, that input in the run dtype, q, k, v, the attention output
    and its projection.
    """
    tokens = width * height // 64
    if tokens > GLOBAL_TOKENS:
        return 0
    return int(vae.channels[-1] * tokens * (4 + 6 * dtype_bytes))


def vae_tile_peak(vae: VaeShape, tile: int, dtype_bytes: int = 2) -> int:
    """Estimated activation bytes of decoding (or encoding) one tile of `tile` px.

    The VAE has no skip connections: the peak is one op's input plus its transient, worst at
    the full-resolution levels (a resnet's GroupNorm and SiLU outputs next to its input).
    """
    ch, levels = vae.channels, len(vae.channels)
    worst = 0.0
    c_prev = ch[-1]
    for level in reversed(range(levels)):
        c, px = ch[level], tile * tile / 4**level
        worst = max(worst, px * (c_prev + max(2 * c_prev, c_prev + c, 4 * c)))
        if level > 0:
            worst = max(worst, px * 4 * c / 4 + 2 * c * px * 4)  # nearest 2x, then conv
        c_prev = c
    # Tiling keeps the tile's own input and output, and fp32 copies for the cross-fade.
    return int(worst * dtype_bytes + tile * tile * vae.image_channels * 4 * 2)


# ---------------------------------------------------------------------------------------------
# A stage: its phases' peaks, its work and its time


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs of a model: UNet and VAE shapes, weights, dtypes."""

    unet: UNetShape
    vae: VaeShape
    text_bytes: int  # both text encoders' weights
    dtype_bytes: int = 2  # the UNet's run dtype
    vae_dtype_bytes: int = 2
    native: int = 1024  # px
    on_gpu: bool = True
    control: ControlShape | None = None  # a ControlNet that runs with the UNet
    spill: float = 0.0  # CPU memory a GPU's VAE may keep step outputs in (spill_budget)
    host: float | None = None  # CPU memory a stage's parked maps and offloaded weights may
    # take (hires.memory.host_room); None: not checked
    fp32_share: float = FP32_SHARE  # a GPU's fp32 FLOP/s as a share of its bf16 rate (hires.gpus)

    @property
    def weights(self) -> int:
        control = self.control.param_bytes if self.control else 0
        return self.unet.param_bytes + self.vae.param_bytes + self.text_bytes + control


@dataclass(frozen=True)
class StageCost:
    """Estimates for one stage under one strategy."""

    peak_bytes: int  # device memory at the stage's peak phase
    denoise_peak_bytes: int  # device memory while the UNet runs
    tflop: float  # UNet and VAE work
    unet_tflop: float
    scratch_bytes: int  # temporary files of the tiled VAE
    seconds: float | None  # at the given FLOP rate; None without one
    vae_tile: int  # px
    rank: float = 0.0  # seconds at the given rate, else at RANK_RATE: what plans compare
    # The most of the CPU's memory the VAE keeps what does not fit the GPU in (of ModelShape.spill)
    vae_spill_bytes: float = 0.0
    host_bytes: int = 0  # CPU memory while the UNet runs: parked maps, offloaded weights
    vae_seconds: float | None = None  # the VAE's share of `seconds` (its work and its copies)

    @property
    def vae_spill(self) -> bool:
        return self.vae_spill_bytes > 0


VAE_TILES = (2048, 1536, 1024, 768, 512)  # px, largest first: fewer tiles, less overlap
SPILL_STEP = 2 ** 0.5  # VAE RAM tried for the fastest: 0.5 GB, then 41 % more each, and all
SMALLER_TILE_SAVING = 0.85  # a smaller VAE tile is taken only if it does this much of the work
LEVER_SLOWDOWN = {"split_cfg": 0.03, "ff_chunks": 0.01, "row_bands": 0.10}  # assumed
# FLOP/s at which strategies are compared when no rate is known (a GPU not in hires.gpus, a
# CPU): without one, every strategy would tie and the least-memory one, the slowest, would win.
RANK_RATE = 100e12


def spill_amounts(budget: float) -> list[float]:
    """The VAE RAM a plan tries, up to `budget`: the same ladder for every budget (so more RAM
    never plans slower than less, up to the ladder's steps), and the budget itself."""
    amounts, amount = [], 0.5e9
    while amount < budget:
        amounts.append(amount)
        amount *= SPILL_STEP
    return [*amounts, budget]


def stage_cost(model: ModelShape, width: int, height: int, steps: int, strategy: Strategy, *,
               base: bool, previous: tuple[int, int] | None, final_decode: bool,
               global_steps: int | None = None, encode_input: bool = False,
               vae_tile: int | None = None, vae_stats: str = "fast",
               rate: float | None = None, budget: int | None = None) -> StageCost:
    """Peak device memory, FLOPs, scratch disk and time of one stage under `strategy`.

    A ControlNet (`model.control`) runs before each UNet call: its peak is counted next to
    the UNet's weights, the UNet's next to its weights and its residuals; its FLOPs are in
    `unet_tflop` (the denoising work).
    """
    lat_h, lat_w = height // 8, width // 8
    unet, control = model.unet, model.control
    resident = strategy.weights == "resident"
    others = model.text_bytes + model.vae.param_bytes if resident else 0
    state = 10 * unet.in_channels * lat_h * lat_w * 4  # latents, noise, x0, blur, eps: fp32
    if control is not None:
        state += control.cond_channels * width * height * model.dtype_bytes  # its image
    denoise = denoise_peak_bytes(unet, control, lat_h, lat_w, strategy, model.dtype_bytes)
    peaks = [denoise + others + state]
    weights_now = model.weights if resident else 0
    if base:
        peaks.append((weights_now or model.text_bytes) + (64 << 20))
    tile = vae_tile or VAE_TILES[-1]
    # The UNet's and the VAE's rates: `rate` is a GPU's bf16 rate; fp32 runs slower there.
    unet_rate, vae_rate = (_rate_in(model, b, rate or RANK_RATE)
                           for b in (model.dtype_bytes, model.vae_dtype_bytes))
    vae_flop = spilled = 0.0
    spill_bytes = 0.0
    if previous or encode_input or final_decode:
        vae_weights = weights_now or model.vae.param_bytes
        # What the fast mode will keep step outputs in: a share of what is free (no budget:
        # room for all of them).
        memo = (float("inf") if budget is None or vae_stats != "fast" else
                budget_from_free(budget - vae_weights - state, model.on_gpu))
        passes = [(*previous, True)] if previous else []
        if previous or encode_input:
            passes.append((width, height, False))
        if final_decode:
            passes.append((width, height, True))

        def cost(t: int, spill: float = 0.0) -> tuple[float, float]:  # FLOPs, bytes copied
            runs = [tiled_cost(model.vae, w, h, decode=d, tile=t, budget=memo, spill=spill,
                               dtype_bytes=model.vae_dtype_bytes) for w, h, d in passes]
            return sum(f for f, _ in runs), sum(b for _, b in runs)

        def work(t: int) -> float:
            return cost(t)[0]

        if vae_tile is None:
            # The largest tile that fits next to the weights (fewer tile runs: each costs
            # launches and host work that FLOPs do not show), unless a smaller one saves
            # a good share of the work.
            fit = [t for t in VAE_TILES if budget is None or vae_weights + vae_tile_peak(
                model.vae, t, model.vae_dtype_bytes) + state <= budget] or [VAE_TILES[-1]]
            least = min(work(t) for t in fit)
            tile = next(t for t in fit if work(t) * SMALLER_TILE_SAVING <= least)
        tile = min(tile, max(width, height))
        vae_flop, spilled = cost(tile)
        if rate and model.on_gpu and model.spill and vae_stats == "fast":
            # Outputs kept in the CPU's memory: less recomputation for copies over the host
            # link, where recomputing takes longer than copying: much on a 4090, little or
            # none on an H100 (BENCHMARKS.md). Only with a known rate. The fastest amount up
            # to the budget: each output kept saves its recomputation but costs its copies,
            # and past some point (l40s, 16K: 64 GB of RAM free) copying costs more.
            best = vae_flop / vae_rate
            for amount in spill_amounts(model.spill):
                flop, copied = cost(tile, amount)
                if flop / vae_rate + copied / HOST_LINK < best:
                    best = flop / vae_rate + copied / HOST_LINK
                    spill_bytes = amount
                    vae_flop, spilled = flop, copied
        attention = max(vae_attention_bytes(model.vae, w, h, model.vae_dtype_bytes)
                        for w, h in [(width, height), *([previous] if previous else [])])
        peaks.append(vae_weights + max(vae_tile_peak(model.vae, tile, model.vae_dtype_bytes),
                                       attention) + state)
    # An upscale step's local pass, plus the global pass in its first `global_steps` steps.
    evals = steps if base else steps + (steps if global_steps is None else global_steps)
    unet_flop = evals * 2 * unet_flops(unet, lat_h, lat_w)
    if control is not None:
        unet_flop += evals * 2 * controlnet_flops(control, lat_h, lat_w)
    scratch = 0
    if vae_stats == "exact" and (previous or encode_input or final_decode):
        # Saved block outputs, fp32, up to 16 GB a level (hires.vae's cap).
        scratch = int(sum(min(16e9, c * width * height / 4**i * 4)
                          for i, c in enumerate(model.vae.channels)))
    # The time, at `rate` or, only to compare strategies, at RANK_RATE.
    slowdown = 1 + sum(v for k, v in LEVER_SLOWDOWN.items() if getattr(strategy, k))
    calls = evals * (2 if strategy.split_cfg else 1)
    moved = spilled
    nets = unet.param_bytes + (control.param_bytes if control else 0)
    if strategy.park_skips:
        parked = _unet_parked_bytes(unet, lat_h, lat_w, strategy.row_bands, model.dtype_bytes)
        # Out once; back once whole, or in bands four times (two norm passes, conv, shortcut).
        moved += evals * 2 * parked * (5 if strategy.row_bands else 2)
        if control is not None:  # its skips, then its residuals: out and back each
            moved += evals * 2 * _skip_bytes(unet, lat_h, lat_w, model.dtype_bytes) * 4
    if strategy.weights == "sequential":
        moved += calls * nets + 2 * model.vae.param_bytes
    elif strategy.weights == "model":
        moved += 2 * (nets + model.vae.param_bytes + (model.text_bytes if base else 0))
    rank = unet_flop * slowdown / unet_rate + vae_flop / vae_rate + moved / HOST_LINK
    host = parked_bytes(model, lat_h, lat_w, strategy) + (0 if resident else model.weights)
    vae_seconds = vae_flop / vae_rate + spilled / HOST_LINK if rate else None
    return StageCost(max(peaks), peaks[0], (unet_flop + vae_flop) / 1e12, unet_flop / 1e12, scratch,
                     rank if rate else None, tile, rank, spill_bytes, host, vae_seconds)


def _rate_in(model: ModelShape, dtype_bytes: int, rate: float) -> float:
    """FLOP/s of work in `dtype_bytes` values when `rate` is the device's half-precision rate."""
    return rate * model.fp32_share if model.on_gpu and dtype_bytes == 4 else rate


def parked_bytes(model: ModelShape, lat_h: int, lat_w: int, strategy: Strategy) -> int:
    """The CPU memory one guided UNet call parks under `strategy` (hires.parking holds it
    for the stage): per batch item the UNet's maps and a ControlNet's skips and residuals."""
    if not strategy.park_skips or not model.on_gpu:
        return 0
    per_item = _unet_parked_bytes(model.unet, lat_h, lat_w, strategy.row_bands,
                                  model.dtype_bytes)
    if model.control is not None:
        per_item += 2 * _skip_bytes(model.unet, lat_h, lat_w, model.dtype_bytes)
    return per_item * (1 if strategy.split_cfg else 2)


def _unet_parked_bytes(shape: UNetShape, lat_h: int, lat_w: int, row_bands: bool,
                       dtype_bytes: int) -> int:
    """One batch item's UNet maps parked: its skips, conv_in's output and, with row bands, the
    input of every up block after the first (its upsampler's output)."""
    parked = _skip_bytes(shape, lat_h, lat_w, dtype_bytes)
    parked += shape.channels[0] * lat_h * lat_w * dtype_bytes
    if row_bands:
        for level in range(1, len(shape.channels)):
            px = -(-lat_h // 2**(level - 1)) * -(-lat_w // 2**(level - 1))
            parked += shape.channels[level] * px * dtype_bytes
    return parked


def _skip_bytes(shape: UNetShape, height: int, width: int, dtype_bytes: int) -> int:
    """Bytes (one batch item) of the skips parked on the CPU: all but conv_in's output."""
    total = 0
    for level, c in enumerate(shape.channels):
        px = -(-height // 2**level) * -(-width // 2**level)
        total += shape.layers * c * px
        if level < len(shape.channels) - 1:
            total += c * -(-height // 2**(level + 1)) * -(-width // 2**(level + 1))
    return total * dtype_bytes


# ---------------------------------------------------------------------------------------------
# Shapes of real models: loaded ones, and the default SDXL without loading a weight


def model_shape(components: Any, controlnet: Any = None) -> ModelShape:
    """The shape of loaded components (weights counted as they are, in their dtypes), with
    the ControlNet that runs with their UNet, if any."""
    from hires.memsim import module_bytes

    pipe = components.pipe
    vae = VaeShape.from_config(dict(pipe.vae.config), param_bytes=module_bytes(pipe.vae))
    text = module_bytes(pipe.text_encoder) + module_bytes(pipe.text_encoder_2)
    return ModelShape(UNetShape.of(pipe.unet), vae, text,
                      dtype_bytes=components.dtype.itemsize,
                      vae_dtype_bytes=components.vae_dtype.itemsize,
                      native=components.native, on_gpu=components.device.type != "cpu",
                      control=ControlShape.of(controlnet) if controlnet is not None else None,
                      spill=spill_budget(components.device), host=host_budget(components))


def host_budget(components: Any) -> float | None:
    """What a GPU run's parked maps and offloaded weights may take of the CPU's memory: what
    is free, and what the components' weights already hold there; None on a CPU."""
    from hires.memory import bytes_on, host_room, ram_bytes

    if components.device.type == "cpu":
        return None
    free = ram_bytes()[1]
    return host_room(free + bytes_on("cpu", components.parts)) if free else None


@lru_cache(maxsize=8)
def sdxl_shape(*, linfusion: bool = True, dtype_bytes: int = 2, on_gpu: bool = True,
               controlnet: bool = False, vae_dtype_bytes: int | None = None) -> ModelShape:
    """SDXL base (with LinFusion-XL unless told not; with an SDXL ControlNet if told) as the
    planner sees it, built on `meta`. The VAE is bf16 on GPUs, fp32 on CPU unless told."""
    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from hires.memsim import module_bytes, sdxl_controlnet_on_meta, sdxl_unet_on_meta
    from hires.sdxl import SDXL_UNET_CONFIG, SDXL_VAE_CONFIG

    dtype = {2: torch.bfloat16, 4: torch.float32}[dtype_bytes]
    if linfusion:
        unet_shape = UNetShape.of(sdxl_unet_on_meta(dtype))
    else:
        from diffusers import UNet2DConditionModel

        with torch.device("meta"):
            unet_shape = UNetShape.of(UNet2DConditionModel(**SDXL_UNET_CONFIG).to(dtype))
    with torch.device("meta"):
        vae = AutoencoderKL(**SDXL_VAE_CONFIG)
        common = dict(vocab_size=49408, max_position_embeddings=77, hidden_act="gelu")
        te1 = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072,
                                           num_attention_heads=12, num_hidden_layers=12,
                                           **common))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=1280, intermediate_size=5120, num_attention_heads=20,
            num_hidden_layers=32, projection_dim=1280, **common))
    if vae_dtype_bytes is None:
        vae_dtype_bytes = 2 if on_gpu else 4
    vae_bytes = module_bytes(vae) // 4 * vae_dtype_bytes
    text = (module_bytes(te1) + module_bytes(te2)) // 4 * dtype_bytes
    control = None
    if controlnet:
        from hires.controlnet import controlnet_like

        # A ControlNet's attention follows the UNet's (hires.controlnet.linearize).
        net = controlnet_like(sdxl_unet_on_meta(dtype)) if linfusion else \
            sdxl_controlnet_on_meta(dtype)
        control = ControlShape.of(net)
    return ModelShape(unet_shape, VaeShape.from_config(SDXL_VAE_CONFIG, param_bytes=vae_bytes),
                      text, dtype_bytes=dtype_bytes, vae_dtype_bytes=vae_dtype_bytes,
                      native=1024, on_gpu=on_gpu, control=control)
