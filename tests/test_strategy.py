"""Every memory lever gives the same UNet output (within 1e-4 of its scale) and is undone
afterwards."""

import pytest
import torch

import hires.strategy as strategy_module
from hires.denoiser import Conditioning, Denoiser
from hires.strategy import Strategy, all_strategies, applied, parked_skips, streamed_blocks


@pytest.fixture(scope="module")
def inputs(tiny):
    g = torch.Generator().manual_seed(0)
    unet = tiny.unet
    cfg = unet.config
    pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    cond = Conditioning(torch.randn(2, 77, cfg.cross_attention_dim, generator=g),
                        torch.randn(2, pooled, generator=g),
                        torch.tensor([[256.0, 512, 0, 0, 256, 512]] * 2))
    return unet, cond, torch.randn(1, 4, 32, 64, generator=g)


def eps(unet, cond, x, strategy, device=torch.device("cpu")):
    with torch.inference_mode(), applied(unet, strategy, device):
        return Denoiser(unet, cond, 5.0, split_cfg=strategy.split_cfg).eps(x, 3.0, 400)


def close(a, b):
    # Split calls and row bands reach the same sums in another order (other GEMM and conv
    # blockings): 2.3e-5 of a 1.85 output on an AVX2 CPU (Zen 3), under 1e-5 on AVX-512
    # (Zen 5). The bound stays far below what a lever that loses rows or mixes batch halves
    # would change.
    return (a - b).abs().max().item() <= 1e-4 * max(1.0, b.abs().max().item())


def test_every_lever_combination_gives_the_same_output(inputs):
    unet, cond, x = inputs
    reference = eps(unet, cond, x, Strategy())
    for s in all_strategies(("resident",)):
        assert close(eps(unet, cond, x, s), reference), s.label


def test_parked_skips_and_streamed_blocks_give_the_same_output(inputs, monkeypatch):
    """On a CPU there is nowhere to park: force the paths, with parking making real copies."""
    unet, cond, x = inputs
    reference = eps(unet, cond, x, Strategy())
    copies = []

    def park(t):
        copies.append(t.shape)
        return t.clone()

    monkeypatch.setattr(strategy_module, "park", park)
    for bands in (False, True):
        s = Strategy(split_cfg=True, row_bands=bands)
        with torch.inference_mode(), parked_skips(unet), \
                streamed_blocks(unet, torch.device("cpu")), applied(unet, s, torch.device("cpu")):
            out = Denoiser(unet, cond, 5.0, split_cfg=True).eps(x, 3.0, 400)
        assert close(out, reference), bands
    # Every skip is parked, conv_in's output too (down block 0 reads the original): 2 calls a
    # run, each parking conv_in's output and the down blocks' (2 each, 1 for the last); with
    # row bands the up blocks' inputs are written where parked maps go by their upsamplers.
    per_call = 1 + 2 * len(unet.down_blocks) - 1
    assert len(copies) == 2 * per_call + 2 * per_call


def test_parking_maps_as_they_are_made_gives_the_same_output(inputs, monkeypatch):
    """`at_once`: conv_in's output and a down block's inner outputs are read from the park."""
    from diffusers import UNet2DConditionModel

    unet, cond, x = inputs
    torch.manual_seed(1)
    two = UNet2DConditionModel(**{**unet.config, "layers_per_block": 2}).eval()
    reference = eps(two, cond, x, Strategy())
    parked = []
    monkeypatch.setattr(strategy_module, "park", lambda t: parked.append(t.shape) or t.clone())
    s = Strategy(split_cfg=True, row_bands=True)
    with torch.inference_mode(), parked_skips(two, at_once=True), \
            applied(two, s, torch.device("cpu")):
        out = Denoiser(two, cond, 5.0, split_cfg=True).eps(x, 3.0, 400)
    assert close(out, reference)
    # Per call: conv_in's output, 3 outputs per down block (2 for the last), 2 of them inner
    # outputs parked as made (a resnet's in block 0, an attention's in blocks 1 and 2).
    assert len(parked) == 2 * (1 + 3 * len(two.down_blocks) - 1)


def test_levers_are_undone_even_after_an_error(inputs):
    unet, cond, x = inputs
    every = Strategy(split_cfg=True, ff_chunks=True, row_bands=True, park_skips=True,
                     weights="sequential")
    with pytest.raises(RuntimeError, match="boom"):
        with parked_skips(unet), applied(unet, every, torch.device("cpu")):
            raise RuntimeError("boom")
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in unet.modules())
    assert not any("forward" in vars(m) for m in unet.modules())


def test_labels_name_the_levers():
    assert Strategy().label == "batched"
    s = Strategy(split_cfg=True, park_skips=True, weights="model")
    assert s.label == "split-cfg+parked-skips+model-offload"
    assert len(all_strategies()) == 48


class _Toy(torch.nn.Module):
    """The block layout streamed_blocks walks: down blocks, a mid block, up blocks."""

    def __init__(self):
        super().__init__()
        self.conv_in = torch.nn.Linear(4, 8)
        self.down_blocks = torch.nn.ModuleList([torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)])
        self.mid_block = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))
        self.up_blocks = torch.nn.ModuleList([torch.nn.Linear(8, 8)])

    def forward(self, x):
        x = self.conv_in(x)
        for b in (*self.down_blocks, self.mid_block, *self.up_blocks):
            x = b(x)
        return x


def test_streamed_blocks_keep_weights_in_one_locked_buffer_without_copies_back():
    """The blocks' weights move once into one page-locked buffer and stay there call after
    call (a block leaving the GPU drops its copies, nothing comes back); a failed call leaves
    them home too. On the CPU nothing moves to a device: the buffer's books are checked."""
    toy = _Toy()
    before = {n: p.detach().clone() for n, p in toy.named_parameters()}
    blocks = [*toy.down_blocks, toy.mid_block, *toy.up_blocks]
    locks, unlocks = [], []
    with torch.inference_mode(), streamed_blocks(
            toy, torch.device("cpu"), lock=lambda b: locks.append(b) or True,
            unlock=unlocks.append):
        (buffer,) = locks
        start = buffer.data_ptr()
        homes = {n: p.data_ptr() for n, p in toy.named_parameters() if not n.startswith("conv_in")}
        assert all(start <= ptr < start + buffer.nbytes for ptr in homes.values())
        weights = sum(p.nbytes for b in blocks for p in b.parameters())
        assert weights <= buffer.nbytes < weights + 64 * len(homes)
        x = torch.randn(3, 4)
        first = toy(x)
        assert torch.equal(toy(x), first)
        assert {n: p.data_ptr() for n, p in toy.named_parameters() if n in homes} == homes
        toy.mid_block.register_forward_hook(lambda *a: (_ for _ in ()).throw(ValueError()))
        with pytest.raises(ValueError):  # a call that fails inside a block
            toy(x)
        assert not unlocks
    assert unlocks == [buffer]
    for n, p in toy.named_parameters():
        if n in homes:  # in place, the same values
            assert p.data_ptr() == homes[n] and torch.equal(p, before[n])


def test_streamed_blocks_reuse_the_buffer_of_an_earlier_stage():
    """A second sequential stage finds the weights in one buffer already: no second copy."""
    toy = _Toy()
    locks, ptrs = [], []
    for _ in range(2):
        with torch.inference_mode(), streamed_blocks(
                toy, torch.device("cpu"), lock=lambda b: locks.append(b) or True,
                unlock=lambda b: None):
            toy(torch.randn(3, 4))
        ptrs.append([p.data_ptr() for b in toy.up_blocks for p in b.parameters()])
    first, second = locks
    assert second.data_ptr() == first.data_ptr() and second.nbytes == first.nbytes
    assert ptrs[0] == ptrs[1]
