"""generate() end to end on the tiny model: sizes, determinism, stages."""

import weakref

import numpy as np
import pytest

from hires.job import Job
from hires.pipeline import generate, plan_for
from hires.strategy import Strategy


def forced(tiny, strategy, **job):
    """The plan of `job` with every stage run under `strategy`."""
    from dataclasses import replace

    plan = plan_for(Job(**job), tiny)
    return replace(plan, stages=tuple(replace(s, strategy=strategy) for s in plan.stages))


def pixels(result):
    return np.asarray(result.image)


def test_base_only_image_has_the_requested_size(tiny):
    r = generate(prompt="a red fox", width=256, height=192, steps=3, seed=1, components=tiny)
    assert r.image.size == (256, 192)
    assert len(r.stages) == 1 and r.stages[0].steps == 3
    assert r.stages[0].unet_evaluations == 6  # 3 steps x (uncond + cond)


def test_same_seed_same_pixels_other_seed_other_pixels(tiny):
    # Latent upsampling keeps this cheap; the pixel path is covered by the three-stage test.
    kw = dict(prompt="a red fox", width=1024, height=256, steps=4, components=tiny,
              upsample="latent")
    a, b, c = generate(seed=7, **kw), generate(seed=7, **kw), generate(seed=8, **kw)
    assert len(a.stages) == 2
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))


def test_the_prompt_changes_the_image(tiny):
    a = generate(prompt="a red fox", width=256, height=256, steps=2, seed=3, components=tiny)
    b = generate(prompt="a blue whale", width=256, height=256, steps=2, seed=3, components=tiny)
    assert not np.array_equal(pixels(a), pixels(b))


def test_upscale_stages_end_exactly_at_an_odd_size(tiny):
    # Small VAE tiles, so that every decode and encode takes the tiled path.
    seen = []
    r = generate(prompt="a castle", width=2000, height=240, steps=6, seed=2, components=tiny,
                 save_stages=True, vae_tile=256,
                 on_stage_image=lambda i, im: seen.append((i, im)))
    assert r.image.size == (2000, 240)
    # Each stage but the last is handed out as it is decoded: the images the result keeps.
    assert [i for i, _ in seen] == [0, 1]
    assert all(im is kept for (_, im), kept in zip(seen, r.stage_images))
    # The base is the tiny model's native area at 25:3; the last stage is the request itself.
    sizes = [(736, 96), (1472, 192), (2000, 240)]
    assert [(s.width, s.height) for s in r.stages] == sizes
    assert [s.ratio for s in r.plan.stages] == [1, 2, 3]
    assert [im.size for im in r.stage_images] == sizes
    # An upscale step runs the local pass, and the dilated global one while its weight counts
    # (c2 >= 0.01: the first step of stage 1, none of stage 2's): CFG 2 each.
    assert [p.global_steps for p in r.plan.stages[1:]] == [1, 0]
    assert [s.unet_evaluations for s in r.stages[1:]] == [
        2 * (s.steps + p.global_steps) for s, p in zip(r.stages[1:], r.plan.stages[1:])]
    assert all(s.seconds > 0 for s in r.stages)


def test_latent_upsampling_option(tiny):
    kw = dict(prompt="a castle", width=1024, height=256, steps=4, seed=2, components=tiny,
              upsample="latent")
    r = generate(**kw)
    assert r.image.size == (1024, 256) and len(r.stages) == 2
    # No decode between stages, unless the stages' images are asked for: then each is decoded
    # to be kept, and the final image is the same.
    kept = generate(save_stages=True, **kw)
    assert [im.size for im in kept.stage_images] == [(512, 128), (1024, 256)]
    assert np.array_equal(pixels(kept), pixels(r))
    seen = []
    shown = generate(on_stage_image=lambda i, im: seen.append((i, im)), **kw)
    assert [(i, im.size) for i, im in seen] == [(0, (512, 128))]
    assert np.array_equal(np.asarray(seen[0][1]), np.asarray(kept.stage_images[0]))
    assert np.array_equal(pixels(shown), pixels(r)) and shown.stage_images == []


def test_unet_is_left_as_it_was(tiny):
    import torch

    before = {n: (m.dilation, m.padding) for n, m in tiny.unet.named_modules()
              if isinstance(m, torch.nn.Conv2d)}
    job = dict(prompt="x", width=1024, height=256, steps=4, seed=0, upsample="latent")
    every = Strategy(split_cfg=True, ff_chunks=True, row_bands=True, park_skips=True)
    generate(components=tiny, plan=forced(tiny, every, **job), **job)
    after = {n: (m.dilation, m.padding) for n, m in tiny.unet.named_modules()
             if isinstance(m, torch.nn.Conv2d)}
    assert before == after
    assert not any("ff.ff" in n for n, _ in tiny.unet.named_modules())
    assert not any("forward" in vars(m) for m in tiny.unet.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in tiny.unet.modules())


def test_memory_levers_do_not_change_the_image(monkeypatch):
    import hires.lean
    from hires.models import load

    # An fp32 VAE: a bf16 one (the default on bf16-capable CPUs) would turn the levers'
    # float rounding in the latents into whole bf16 steps of its input.
    tiny = load("tiny", vae_dtype="fp32")
    job = dict(prompt="a castle", width=1024, height=256, steps=4, seed=5, upsample="latent")
    calls = []
    real = hires.lean.resnet
    monkeypatch.setattr(hires.lean, "resnet", lambda *a: calls.append(1) or real(*a))
    plain = pixels(generate(components=tiny, plan=forced(tiny, Strategy(), **job), **job))
    assert not calls
    every = Strategy(split_cfg=True, ff_chunks=True, row_bands=True)
    lean = pixels(generate(components=tiny, plan=forced(tiny, every, **job), **job))
    assert calls  # the resnets ran in row bands
    diff = np.abs(lean.astype(int) - plain.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.001  # float rounding only


def test_out_of_memory_retries_the_stage_with_a_cheaper_strategy(tiny):
    import torch

    from hires.plan import cheaper

    job = dict(prompt="a castle", width=1024, height=256, steps=3, seed=4, upsample="latent")
    plan = plan_for(Job(**job), tiny)
    assert plan.stages[1].strategy == Strategy()  # plenty of RAM: the fastest, no levers
    expected = pixels(generate(components=tiny, plan=plan, **job))
    real = tiny.pipe.unet.forward
    failures, held = [], []

    def flaky(*args, **kwargs):  # the first call in the x2 stage runs out of memory
        if args[0].shape[-1] == 1024 // 8 and not failures:
            activations = torch.ones(1024)  # what the failed call holds on a GPU
            failures.append(weakref.ref(activations))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        if failures and not held:  # the retry's first call: the failed one's memory is free
            held.append(failures[0]() is not None)
        return real(*args, **kwargs)

    tiny.pipe.unet.forward = flaky
    try:
        r = generate(components=tiny, plan=plan, **job)
    finally:
        del tiny.pipe.unet.forward
    assert len(failures) == 1 and held == [False]
    from hires.costs import model_shape

    fallback = cheaper(plan.stages[1], list(plan.stages), model_shape(tiny), tiny.offload)
    assert r.stages[1].retried_with == fallback.strategy.label != "batched"
    assert r.stages[0].retried_with is None
    assert any("ran out of GPU memory" in w for w in r.warnings)
    diff = np.abs(pixels(r).astype(int) - expected.astype(int))
    assert diff.max() <= 1  # the same image: the levers are exact


def test_bad_job_is_refused_before_any_work(tiny):
    from hires.job import JobError

    with pytest.raises(JobError, match="multiple of 8"):
        generate(prompt="x", width=1001, height=1000, components=tiny)


def test_vae_tile_is_the_jobs_else_the_plans_else_the_default():
    from hires.costs import sdxl_shape
    from hires.job import Job
    from hires.pipeline import DEFAULT_VAE_TILE, vae_tile
    from hires.plan import make_plan

    planned = make_plan(16384, 16384, model=sdxl_shape(), budget=24 * 1024**3,
                        rate=400e12).stages[-1]
    unplanned = make_plan(1024, 1024).stages[-1]
    assert planned.cost is not None and unplanned.cost is None
    assert vae_tile(Job(width=16384, height=16384), planned) == planned.cost.vae_tile
    assert vae_tile(Job(width=16384, height=16384, vae_tile=512), planned) == 512
    assert vae_tile(Job(width=1024, height=1024), unplanned) == DEFAULT_VAE_TILE


def test_the_plan_counts_the_unet_passes_a_karras_run_makes(tiny):
    r = generate(prompt="a castle", width=512, height=512, steps=12, seed=1, components=tiny,
                 karras=True)
    assert [s.unet_evaluations for s in r.stages[1:]] == [
        2 * (s.steps + p.global_steps) for s, p in zip(r.stages[1:], r.plan.stages[1:])]
    assert 0 < r.plan.stages[1].global_steps < r.plan.stages[1].steps
