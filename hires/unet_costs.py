"""The UNet's (and a ControlNet's) costs from their configs alone: peak device memory and FLOPs.

The memory model walks the UNet's forward pass block by block, as diffusers runs it, keeping
the tensors that stay alive (skip connections, the block's input) and adding each block's
internal peak (e.g. a resnet's GroupNorm and SiLU outputs, a feed-forward's 8x-wide GEGLU
projection). Row bands and feed-forward chunks cap those peaks at a band's or a chunk's size.
`hires.memsim` runs the real model on a simulated GPU to check it (tests/test_costs.py,
benchmarks/memory.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hires.lean import GPU_BAND_BYTES
from hires.linfusion import GPU_WORK_BYTES, GPU_WORK_FLOOR
from hires.strategy import Strategy

FF_TOKENS = 16384  # tokens per chunk (hires.token_chunks.CHUNK_TOKENS)
# fp32 work buffers of one LinFusion call on a GPU (hires.linfusion): at most LINFUSION_WORK,
# and at least LINFUSION_FLOOR where the call's input is smaller; on a CPU at most 8 MB, which
# the planner counts as the GPU's figure without the floor.
LINFUSION_WORK, LINFUSION_FLOOR = GPU_WORK_BYTES, GPU_WORK_FLOOR


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


# An IP-Adapter's image projection: 4 tokens from the image encoder's 1280-wide embedding
# (SDXL's ViT-bigG/14), as h94's ip-adapter_sdxl has it.
IP_TOKENS, IP_IMAGE_DIM = 4, 1280


def with_ip_adapter(shape: UNetShape, dtype_bytes: int,
                    projection: int | None = None) -> UNetShape:
    """`shape` with an IP-Adapter's weights on it: a key and a value projection of the image
    tokens beside each cross-attention (in its block), and the image projection (outside
    them; `projection` parameters where its file says, else the plain adapter's). SDXL's:
    351 M parameters, 703 MB in fp16, as the Hub's ip-adapter_sdxl file. Its image encoder
    runs once a job, then waits on the CPU (hires.ip_adapter): not counted."""
    def attention(channels: int, transformers: int, attentions: int) -> int:
        return attentions * transformers * 2 * shape.cross_dim * channels * dtype_bytes

    down = [attention(c, d, shape.layers) for c, d in zip(shape.channels, shape.depth)]
    mid = [attention(shape.channels[-1], shape.depth[-1], 1)]
    up = [attention(c, d, shape.layers + 1)
          for c, d in zip(reversed(shape.channels), reversed(shape.depth))]
    blocks = [*down, *mid, *up]
    outer = projection * dtype_bytes if projection is not None else \
        (IP_IMAGE_DIM + 1) * IP_TOKENS * shape.cross_dim * dtype_bytes \
        + 2 * shape.cross_dim * dtype_bytes  # the projection, its bias, its LayerNorm
    from dataclasses import replace

    held = shape.block_param_bytes
    return replace(shape, param_bytes=shape.param_bytes + sum(blocks) + outer,
                   block_param_bytes=tuple(a + b for a, b in zip(held, blocks, strict=True))
                   if held else held,
                   outer_param_bytes=shape.outer_param_bytes + outer)


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
                 strategy: Strategy, gpu: bool = True) -> None:
        self.s, self.h, self.w, self.gpu = shape, height, width, gpu
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
        floor = LINFUSION_FLOOR if self.gpu else 0
        attn = 5 * c + (min(LINFUSION_WORK, max(floor, c // self.unit * self.batch * 4))
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
                    dtype_bytes: int = 2, *, control: bool = False, gpu: bool = True,
                    items: int = 2) -> int:
    """Estimated peak device bytes of one guided UNet evaluation at a latent of this size,
    the UNet's weights as `strategy.weights` keeps them included, nothing else. `items`: the
    batch items of an evaluation, 2 with classifier-free guidance, 1 without.

    With `control`, a ControlNet's residuals wait on the GPU when the call starts (on the CPU
    with parked skips, but conv_in's and the mid block's) and go as the down blocks add them
    (hires.controlnet.residuals_added).
    """
    batch = 1 if strategy.split_cfg else items
    walk = _Walk(shape, height, width, batch, dtype_bytes, strategy, gpu)
    ch, levels = shape.channels, len(shape.channels)
    park = strategy.park_skips
    first = walk.size(ch[0], 0)  # conv_in's output: a skip and block 0's input
    mid = walk.size(ch[-1], levels - 1)
    if control:
        walk.live += first + mid + (0 if park else skip_bytes(shape, height, width,
                                                                dtype_bytes) * batch)
    skips, given = _down_path(walk, first, control=control)
    _mid_block(walk, mid, given, control=control)
    _up_path(walk, skips)
    # Out: GroupNorm, SiLU, conv to the latent channels.
    walk.weights = 0
    walk.touch(walk.size(ch[0], 0))  # the norm's output beside the up path's (SiLU in place)
    if strategy.weights == "sequential" and shape.block_param_bytes:
        return shape.outer_param_bytes + walk.peak
    return shape.param_bytes + walk.peak


def _down_path(walk: _Walk, first: int, *, control: bool) -> tuple[list[int], int]:
    """The down blocks from conv_in's output (`first` bytes): the skips they make, and the
    bytes of the GPU copy of the last block's output (what parked skips leave there)."""
    shape, strategy, ch = walk.s, walk.strategy, walk.s.channels
    park = strategy.park_skips
    # Parked as made (hires.strategy.applied): conv_in's output, a down block's inner outputs.
    at_once = park and strategy.row_bands and not control
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
    return skips, given


def _mid_block(walk: _Walk, mid: int, given: int, *, control: bool) -> None:
    """The mid block: resnet, attention, resnet at the lowest level; then a ControlNet's mid
    residual (`mid` bytes) goes, and with parked skips the last down block's output."""
    shape = walk.s
    low = len(shape.channels) - 1
    c = shape.channels[low]
    walk.block(low + 1)
    walk.live += walk.resnet(c, c, low)
    walk.transformer(c, low, shape.depth[low])
    walk.touch(walk.resnet(c, c, low))
    if control:
        walk.live -= mid
    if walk.strategy.park_skips:
        walk.live -= given


def _up_path(walk: _Walk, skips: list[int]) -> None:
    """The up blocks, deepest first: each takes back layers + 1 `skips` (taken off the list)."""
    shape, strategy = walk.s, walk.strategy
    ch, layers, levels = shape.channels, shape.layers, len(shape.channels)
    park = strategy.park_skips
    c_h = ch[levels - 1]
    parked_input = False  # the up block's input waits on the CPU (parked_skips, row bands)
    for level in reversed(range(levels)):
        walk.block(2 * levels - level)
        c = ch[level]
        mine = skips[-(layers + 1):]
        del skips[-(layers + 1):]
        moved = sum(mine) if park and not strategy.row_bands else 0
        walk.live += moved  # parked skips come back whole for a diffusers up block
        first_input = 0 if parked_input else walk.size(c_h, level)
        hidden = _up_resnets(walk, level, c_h, c, mine)
        c_h = c
        if level > 0:
            parked_input = park and strategy.row_bands
            up = walk.upsample(c, level, parked_input)
            walk.live += (0 if parked_input else up) - hidden - first_input
        else:
            walk.live -= first_input
        walk.live -= moved + (0 if park else sum(mine))


def _up_resnets(walk: _Walk, level: int, c_h: int, c: int, mine: list[int]) -> int:
    """An up block's resnets (and transformers), each on its hidden state (`c_h` channels,
    then `c`) and a skip of `mine`, last first; returns the last one's output bytes."""
    hidden = 0  # the block's running hidden state, once it differs from its input
    for skip in reversed(mine):
        c_skip = skip // walk.pixels(level) // walk.unit
        if walk.strategy.row_bands:
            out = walk.resnet(c_h + c_skip, c, level)
        else:
            cat = walk.size(c_h + c_skip, level)
            walk.live += cat - hidden
            out = walk.resnet(c_h + c_skip, c, level)
            walk.live -= cat
            hidden = 0
        walk.live += out - hidden
        hidden = out
        if walk.s.depth[level]:
            walk.transformer(c, level, walk.s.depth[level])
        c_h = c
    return hidden


def controlnet_peak_bytes(control: ControlShape, height: int, width: int, strategy: Strategy,
                         dtype_bytes: int = 2, *, gpu: bool = True, items: int = 2) -> int:
    """Estimated peak device bytes of one guided ControlNet evaluation at a latent of this
    size (its weights as `strategy.weights` keeps them included; the control image is the
    stage's), and what it leaves for the UNet call is counted there (unet_peak_bytes)."""
    shape = control.net
    batch = 1 if strategy.split_cfg else items
    walk = _Walk(shape, height, width, batch, dtype_bytes, strategy, gpu)
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
                       strategy: Strategy, dtype_bytes: int = 2, *, gpu: bool = True,
                       items: int = 2) -> int:
    """Peak device bytes of one guided evaluation: the UNet's, or with a ControlNet the larger
    of its call (the UNet's weights held) and the UNet's (its weights and residuals held);
    weights as `strategy.weights` keeps them, the control image not included. `gpu`: on a
    GPU (LinFusion's work buffers differ); `items`: 2 with CFG, 1 without."""
    peak = unet_peak_bytes(unet, height, width, strategy, dtype_bytes,
                           control=control is not None, gpu=gpu, items=items)
    if control is None:
        return peak
    streamed = strategy.weights == "sequential"
    held = control.net.outer_param_bytes if streamed else control.param_bytes
    unet_held = unet.outer_param_bytes if streamed else unet.param_bytes
    return max(peak + held, unet_held + controlnet_peak_bytes(
        control, height, width, strategy, dtype_bytes, gpu=gpu, items=items))


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


def unet_parked_bytes(shape: UNetShape, lat_h: int, lat_w: int, row_bands: bool,
                       dtype_bytes: int) -> int:
    """One batch item's UNet maps parked: its skips, conv_in's output and, with row bands, the
    input of every up block after the first (its upsampler's output)."""
    parked = skip_bytes(shape, lat_h, lat_w, dtype_bytes)
    parked += shape.channels[0] * lat_h * lat_w * dtype_bytes
    if row_bands:
        for level in range(1, len(shape.channels)):
            px = -(-lat_h // 2**(level - 1)) * -(-lat_w // 2**(level - 1))
            parked += shape.channels[level] * px * dtype_bytes
    return parked


def skip_bytes(shape: UNetShape, height: int, width: int, dtype_bytes: int) -> int:
    """Bytes (one batch item) of the skips parked on the CPU: all but conv_in's output."""
    total = 0
    for level, c in enumerate(shape.channels):
        px = -(-height // 2**level) * -(-width // 2**level)
        total += shape.layers * c * px
        if level < len(shape.channels) - 1:
            total += c * -(-height // 2**(level + 1)) * -(-width // 2**(level + 1))
    return total * dtype_bytes
