"""The planner's cost model against a simulated GPU (full SDXL shapes on `meta`) and torch's
own FLOP counter."""

from functools import cache, lru_cache

import pytest
import torch

from hires.costs import VaeShape, vae_flops
from hires.memsim import PeakTracker, module_bytes, sdxl_unet_on_meta, unet_call_peak
from hires.strategy import Strategy
from hires.unet_costs import UNetShape, unet_flops, unet_peak_bytes

EVERY = dict(split_cfg=True, ff_chunks=True, row_bands=True, park_skips=True)
STRATEGIES = {
    "batched": Strategy(),
    "split-cfg+ff-chunks": Strategy(split_cfg=True, ff_chunks=True),
    "+row-bands": Strategy(split_cfg=True, ff_chunks=True, row_bands=True),
    "every lever": Strategy(**EVERY),
    "every lever, sequential": Strategy(**EVERY, weights="sequential"),
    "parked skips, batched": Strategy(park_skips=True),
}


@lru_cache(maxsize=1)
def sdxl():
    return sdxl_unet_on_meta()


@cache
def simulated_peak(latent: int, name: str) -> int:
    """The simulated UNet call's peak without a ControlNet: a deterministic replay on meta
    (5-12 s each), which the ControlNet test below compares with for three of these cases."""
    return unet_call_peak(sdxl(), latent, latent, STRATEGIES[name])


# The 1K stage under every strategy; the 4K stage under the ones a 4K stage gets on small cards
# (benchmarks/memory.py covers every pair, 16K included).
CASES = [(128, name) for name in STRATEGIES] + [
    (512, name) for name in ("+row-bands", "every lever", "every lever, sequential")]


@pytest.mark.parametrize("latent,name", CASES)
def test_estimate_within_15_percent_of_the_simulated_gpu(latent, name):
    strategy = STRATEGIES[name]
    unet = sdxl()
    simulated = simulated_peak(latent, name)
    estimated = unet_peak_bytes(UNetShape.of(unet), latent, latent, strategy)
    assert abs(estimated / simulated - 1) <= 0.15, (estimated / 2**30, simulated / 2**30)


def test_peak_tracker_agrees_with_torch_mem_tracker():
    from torch.distributed._tools.mem_tracker import MemTracker

    first = torch.nn.Conv2d(64, 64, 3, padding=1, device="meta")
    second = torch.nn.Conv2d(64, 64, 3, padding=1, device="meta")
    x = torch.empty(2, 64, 96, 96, device="meta")

    def run():
        h = torch.nn.functional.silu(first(x))
        return second(h) + h

    # MemTracker also counts the weights of the modules that run.
    ours = PeakTracker(baseline=module_bytes(first) + module_bytes(second))
    with torch.inference_mode(), ours:
        run()
    theirs = MemTracker()
    with torch.inference_mode(), theirs:
        run()
    peak = theirs.get_tracker_snapshot("peak")[torch.device("meta")]["Total"]
    assert ours.peak == peak


def test_unet_flops_match_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    unet = sdxl()
    dt, dev = torch.bfloat16, "meta"
    added = {"text_embeds": torch.empty(1, 1280, device=dev, dtype=dt),
             "time_ids": torch.empty(1, 6, device=dev, dtype=dt)}
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        unet(torch.empty(1, 4, 48, 64, device=dev, dtype=dt), torch.ones(1, device=dev),
             encoder_hidden_states=torch.empty(1, 77, 2048, device=dev, dtype=dt),
             added_cond_kwargs=added)
    model = unet_flops(UNetShape.of(unet), 48, 64)
    assert abs(model / counter.get_total_flops() - 1) < 0.02


@pytest.mark.parametrize("decode", [True, False])
def test_vae_flops_match_torch_flop_counter(decode):
    from diffusers import AutoencoderKL
    from torch.utils.flop_counter import FlopCounterMode

    from hires.sdxl import SDXL_VAE_CONFIG

    with torch.device("meta"):
        vae = AutoencoderKL(**SDXL_VAE_CONFIG)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        if decode:
            vae.decode(torch.empty(1, 4, 32, 48, device="meta"))
        else:
            vae.encode(torch.empty(1, 3, 256, 384, device="meta"))
    model = vae_flops(VaeShape.from_config(SDXL_VAE_CONFIG), 384, 256, decode=decode)
    assert abs(model / counter.get_total_flops() - 1) < 0.05


# ---------------------------------------------------------------------------------------------
# With a ControlNet: its call before the UNet's, its residuals, its weights, its FLOPs


@lru_cache(maxsize=1)
def sdxl_controlnet():
    from hires.memsim import sdxl_controlnet_on_meta

    return sdxl_controlnet_on_meta()


@pytest.mark.parametrize("latent,name", [(128, "batched"), (128, "every lever, sequential"),
                                         (512, "every lever")])
def test_controlnet_estimate_within_15_percent_of_the_simulated_gpu(latent, name):
    from hires.unet_costs import ControlShape, denoise_peak_bytes

    strategy, unet, net = STRATEGIES[name], sdxl(), sdxl_controlnet()
    image = 3 * 64 * latent * latent * 2  # the control image, counted by the stage
    simulated = unet_call_peak(unet, latent, latent, strategy, controlnet=net) - image
    estimated = denoise_peak_bytes(UNetShape.of(unet), ControlShape.of(net), latent, latent,
                                   strategy)
    assert abs(estimated / simulated - 1) <= 0.15, (estimated / 2**30, simulated / 2**30)
    assert simulated > simulated_peak(latent, name)


def test_controlnet_flops_match_torch_flop_counter(tiny):
    from helpers_control import tiny_controlnet
    from torch.utils.flop_counter import FlopCounterMode

    from hires.unet_costs import ControlShape, controlnet_flops

    h, w = 24, 32
    for net, dev, dt in ((tiny_controlnet(tiny.unet), "cpu", torch.float32),
                         (sdxl_controlnet(), "meta", torch.bfloat16)):
        cfg = net.config
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        added = {"text_embeds": torch.zeros(1, pooled, device=dev, dtype=dt),
                 "time_ids": torch.zeros(1, 6, device=dev, dtype=dt)}
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            net(torch.zeros(1, 4, h, w, device=dev, dtype=dt), torch.ones(1, device=dev),
                encoder_hidden_states=torch.zeros(1, 77, cfg.cross_attention_dim, device=dev,
                                                  dtype=dt),
                controlnet_cond=torch.zeros(1, 3, 8 * h, 8 * w, device=dev, dtype=dt),
                added_cond_kwargs=added)
        model = controlnet_flops(ControlShape.of(net), h, w)
        assert abs(model / counter.get_total_flops() - 1) < 0.03, dev


def test_a_controlnet_costs_memory_and_time_and_the_planner_makes_room():
    from dataclasses import replace

    from hires.costs import sdxl_shape, stage_cost
    from hires.plan import make_plan

    plain, control = sdxl_shape(), sdxl_shape(controlnet=True)
    assert control.weights - plain.weights == control.control.param_bytes > 2 * 10**9
    budget = 12 * 2**30
    without = make_plan(8192, 8192, model=plain, budget=budget, rate=400e12)
    with_control = make_plan(8192, 8192, model=control, budget=budget, rate=400e12)
    for a, b in zip(without.stages, with_control.stages, strict=True):
        same = stage_cost(control, a.width, a.height, a.steps, a.strategy, base=a.kind == "base",
                          previous=None, final_decode=False)
        assert same.denoise_peak_bytes > a.cost.denoise_peak_bytes
        assert b.cost.unet_tflop > a.cost.unet_tflop and b.cost.seconds > a.cost.seconds
    # Where the ControlNet no longer fits next to the UNet, a cheaper strategy is chosen.
    assert any(a.strategy != b.strategy for a, b in zip(without.stages, with_control.stages,
                                                        strict=True))
    assert replace(control, control=None) == plain


def test_a_tensor_counted_before_tracking_is_not_counted_again():
    """The simulator's control image: counted once, though `.to(same dtype)` returns it."""
    from hires.memsim import PeakTracker

    image = torch.empty(1, 3, 64, 64, device="meta")
    tracker = PeakTracker()
    tracker.count(image)
    with tracker:
        same = image.to(image.dtype)
    assert same.untyped_storage().nbytes() == image.nbytes
    assert tracker.live == tracker.peak == image.nbytes


def test_vae_attention_is_quadratic_while_whole_then_linear_in_cells():
    from hires.costs import vae_attention_bytes
    from hires.sdxl import SDXL_VAE_CONFIG
    from hires.vae_attention import GLOBAL_TOKENS, is_global

    vae = VaeShape.from_config(SDXL_VAE_CONFIG)
    side = int(GLOBAL_TOKENS**0.5) * 8  # the largest square image whose attention runs whole
    assert is_global((side // 8, side // 8)) and not is_global((side // 8 + 1, side // 8))

    half = side // 2
    assert _attention_only(vae, half) == pytest.approx(2 * 2 * (half // 8) ** 4 * vae.channels[-1])
    assert _attention_only(vae, side) == pytest.approx(16 * _attention_only(vae, half))
    # Past the limit each token attends to the tokens around its block, the cells and the
    # landmarks.
    from hires.vae_attention import CONTEXT_CELLS, SWEEP_BLOCK, SWEEP_REACH, landmarks

    big = side * 2
    for size in (big, 2 * big):
        tokens = (size // 8) ** 2
        keys = (SWEEP_BLOCK + 2 * SWEEP_REACH) ** 2 + CONTEXT_CELLS + landmarks(
            (size // 8, size // 8))
        assert _attention_only(vae, size) == pytest.approx(4 * tokens * keys * vae.channels[-1])
    # Its maps, and a chunk of queries' float32 scores and weights (`attend`).
    from hires.vae_attention import SCORE_BYTES

    assert vae_attention_bytes(vae, side, side) == vae.channels[-1] * (side // 8) ** 2 * 16 \
        + 2 * SCORE_BYTES
    assert vae_attention_bytes(vae, big, big) == 0


def _attention_only(vae: VaeShape, size: int) -> float:
    """The attention's FLOPs in vae_flops: its total less the same with no keys at all."""
    from hires import costs

    saved = (costs.GLOBAL_TOKENS, costs.CONTEXT_CELLS, costs.SWEEP_BLOCK, costs.SWEEP_REACH,
             costs.landmarks)
    try:
        costs.GLOBAL_TOKENS = costs.CONTEXT_CELLS = costs.SWEEP_BLOCK = costs.SWEEP_REACH = 0
        costs.landmarks = lambda size: 0
        none = vae_flops(vae, size, size, decode=True)
    finally:
        (costs.GLOBAL_TOKENS, costs.CONTEXT_CELLS, costs.SWEEP_BLOCK, costs.SWEEP_REACH,
         costs.landmarks) = saved
    return vae_flops(vae, size, size, decode=True) - none


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_vae_tile_peak_covers_the_patched_decoder_on_a_simulated_gpu(dtype):
    # The full SDXL decoder's up blocks on a 1024 px tile (its peak is at full resolution; the
    # mid-block attention is priced apart), GroupNorms patched as the tiled VAE runs them. A
    # bf16 tile once took an fp32 copy per GroupNorm: simulated 2.5 GiB here (10.0 at 2048 px)
    # against the 1.5 GiB estimate.
    from diffusers import AutoencoderKL

    from hires import vae_stats
    from hires.costs import vae_tile_peak
    from hires.memsim import peak_of
    from hires.sdxl import SDXL_VAE_CONFIG

    with torch.device("meta"):
        vae = AutoencoderKL(**SDXL_VAE_CONFIG).to(dtype).eval()
    decoder, tile = vae.decoder, 1024
    state = vae_stats.State(size=(tile // 8, tile // 8), cell=1, device=torch.device("meta"))
    for m in decoder.modules():
        if isinstance(m, torch.nn.GroupNorm):
            state.stats[m] = (torch.zeros(m.num_groups, device="meta"),
                              torch.ones(m.num_groups, device="meta"))

    def up_blocks() -> torch.Tensor:
        x = torch.empty(1, 512, tile // 8, tile // 8, device="meta", dtype=dtype)
        for block in decoder.up_blocks:
            x = block(x)
        return decoder.conv_out(decoder.conv_act(decoder.conv_norm_out(x)))

    with vae_stats._patched(decoder, state):
        simulated = peak_of(up_blocks)
    shape = VaeShape.from_config(SDXL_VAE_CONFIG, param_bytes=module_bytes(vae))
    estimate = vae_tile_peak(shape, tile, dtype.itemsize)
    assert 0.9 * estimate <= simulated <= estimate


def test_a_gpu_stage_counts_launch_bound_calls_and_the_hosts_resize_and_save():
    """Measured on an H200: a 1K guided evaluation took 0.081 s against 0.023 s of FLOPs, and
    the host's resize and PNG save took seconds at 16K; the planner counts both."""
    from dataclasses import replace

    from hires.costs import host_seconds, sdxl_shape, stage_cost
    from hires.gpus import CALL_SECONDS, RESIZE_PX_PER_CORE, SAVE_PX_PER_CORE
    from hires.strips import cores

    shape = sdxl_shape(linfusion=True)

    def base(strategy: Strategy, on_gpu: bool = True):
        return stage_cost(replace(shape, on_gpu=on_gpu), 1024, 1024, 50, strategy, base=True,
                          previous=None, final_decode=False, rate=262e12)

    batched, split = base(Strategy()), base(Strategy(split_cfg=True))
    assert batched.unet_tflop * 1e12 / 262e12 < 0.6 * 50 * CALL_SECONDS  # FLOPs: far less
    assert batched.seconds == pytest.approx(50 * CALL_SECONDS)
    assert split.seconds >= 100 * CALL_SECONDS  # twice the calls
    assert base(Strategy(), on_gpu=False).seconds < batched.seconds  # a CPU: no such floor

    def upscale(final: bool):
        return stage_cost(shape, 4096, 4096, 4, Strategy(), base=False, previous=(2048, 2048),
                          final_decode=final, rate=262e12)

    px = 4096 * 4096
    assert host_seconds(4096, 4096, resize=True, save=True) == pytest.approx(
        (px / RESIZE_PX_PER_CORE + px / SAVE_PX_PER_CORE) / cores())
    plain, last = upscale(False), upscale(True)
    # The last stage also decodes and saves: its extra time is that decode's and the save's.
    assert last.seconds - plain.seconds == pytest.approx(
        last.vae_seconds - plain.vae_seconds + px / SAVE_PX_PER_CORE / cores())

    # An upscale's first stage resizes the user's image to its size before the encode.
    given = stage_cost(shape, 2048, 2048, 8, Strategy(), base=False, previous=None,
                       encode_input=True, final_decode=False, rate=262e12)
    assert given.host_seconds == pytest.approx(2048 * 2048 / RESIZE_PX_PER_CORE / cores())
