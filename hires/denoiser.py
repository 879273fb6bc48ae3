"""The guided noise prediction: a UNet, its text conditioning and classifier-free guidance.

The samplers (sampling.py) see only `Denoiser.eps(x, sigma, t)` and `Denoiser.dilated(r)`;
what runs inside (split CFG, an image prompt's embeddings, a ControlNet) is decided here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hires.controlnet import control_residuals, residuals_added


@dataclass
class Conditioning:
    """Text conditioning for CFG: row 0 is unconditional, row 1 conditional."""

    embeds: Tensor  # 2 x 77 x D
    pooled: Tensor  # 2 x P
    time_ids: Tensor  # 2 x 6
    # IP-Adapter: one 2 x ... tensor of image-prompt embeddings per adapter, rows as above.
    image_embeds: list[Tensor] | None = None

    def row(self, i: int) -> Conditioning:
        pick = slice(i, i + 1)
        images = None if self.image_embeds is None else [e[pick] for e in self.image_embeds]
        return Conditioning(self.embeds[pick], self.pooled[pick], self.time_ids[pick], images)


@dataclass
class Control:
    """A ControlNet for one stage: the model, its image at the stage's pixel size
    (1 x 3 x H x W in [0, 1], hires.controlnet.control_tensor) and its strength."""

    model: nn.Module  # diffusers ControlNetModel
    image: Tensor
    scale: float = 1.0


@dataclass
class Denoiser:
    """A UNet with its conditioning and guidance: `eps(x, sigma, t)` gives the guided noise."""

    unet: nn.Module
    cond: Conditioning
    guidance: float
    split_cfg: bool = False  # uncond and cond as two UNet calls: less memory, same result
    evaluations: int = 0  # UNet evaluations (batch items), for reports
    control: Control | None = None
    control_evaluations: int = 0  # ControlNet evaluations (batch items)

    def eps(self, x: Tensor, sigma: float, t: int) -> Tensor:
        x_in = (x / math.sqrt(sigma**2 + 1)).to(self.cond.embeds.dtype)
        if self.guidance <= 1.0:
            return self._unet(x_in, t, self.cond.row(1)).float()
        if self.split_cfg:
            uncond = self._unet(x_in, t, self.cond.row(0)).float()
            cond = self._unet(x_in, t, self.cond.row(1)).float()
        else:
            uncond, cond = self._unet(torch.cat([x_in, x_in]), t, self.cond).float().chunk(2)
        return cfg(uncond, cond, self.guidance)

    def _unet(self, x: Tensor, t: int, cond: Conditioning) -> Tensor:
        self.evaluations += x.shape[0]
        timestep = torch.full((1,), float(t), device=x.device)  # a factory op: fake-tensor safe
        added = {"text_embeds": cond.pooled, "time_ids": cond.time_ids}
        residuals = None
        if self.control is not None:
            self.control_evaluations += x.shape[0]
            c = self.control
            residuals = control_residuals(c.model, x, timestep, cond.embeds, dict(added),
                                          c.image.to(x.dtype), c.scale)
        if cond.image_embeds is not None:  # IP-Adapter: the UNet's alone
            added["image_embeds"] = cond.image_embeds
        with residuals_added(self.unet, residuals):
            return self.unet(x, timestep, encoder_hidden_states=cond.embeds,
                             added_cond_kwargs=added, return_dict=False)[0]

    @contextmanager
    def dilated(self, r: int, downsamplers: bool = True) -> Iterator[None]:
        """The global pass's dilation (see dilated_convs), for as long as the block runs.

        A ControlNet is dilated too, but not its conditioning embedding: that maps each 8x8
        pixel block to its latent cell, as the latent itself is not subsampled.
        """
        with ExitStack() as stack:
            stack.enter_context(dilated_convs(self.unet, r, downsamplers))
            control = getattr(self, "control", None)  # duck-typed denoisers may have none
            if control is not None:
                net = control.model
                stack.enter_context(dilated_convs(net, r, downsamplers,
                                                  keep=net.controlnet_cond_embedding))
            yield


def cfg(uncond: Tensor, cond: Tensor, guidance: float) -> Tensor:
    """Classifier-free guidance."""
    return uncond + guidance * (cond - uncond)


@contextmanager
def dilated_convs(unet: nn.Module, r: int, downsamplers: bool = True,
                  keep: nn.Module | None = None) -> Iterator[None]:
    """Dilate (and pad) every 3x3 conv by r for the global pass, but those in `keep`;
    always restored."""
    changed = []
    kept = set(keep.modules()) if keep is not None else set()
    try:
        if r > 1:
            for m in unet.modules():
                if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m not in kept:
                    if m.stride != (1, 1) and not downsamplers:
                        continue
                    changed.append((m, m.dilation, m.padding))
                    m.dilation, m.padding = (r, r), (r, r)
        yield
    finally:
        for m, dilation, padding in changed:
            m.dilation, m.padding = dilation, padding
