"""Guidance <= 1 runs the UNet once a step (no CFG pair): the plan prices it so."""

import json

import pytest
from helpers_cli import cli

from hires.job import Job


def _stages(*args: str) -> list[dict]:
    result = cli("plan", "x", "--json", *args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)["stages"]


def test_no_cfg_plans_half_the_unet_work_and_no_split_cfg():
    """`--guidance 1` was planned with the CFG pair: twice the UNet's work and time, and a
    CPU stage picked split-cfg, a lever that has no pair to split."""
    guided = _stages("--size", "16384", "--gpu", "h100", "--guidance", "7.5")
    plain = _stages("--size", "16384", "--gpu", "h100", "--guidance", "1")
    for g, p in zip(guided, plain, strict=True):
        assert p["unet_tflop"] == pytest.approx(g["unet_tflop"] / 2, abs=0.002)  # 3 decimals
        assert p["peak_bytes"] <= g["peak_bytes"]
    assert sum(p["seconds"] for p in plain) < 0.85 * sum(g["seconds"] for g in guided)
    cpu = _stages("--size", "4096", "--device", "cpu", "--guidance", "1")
    assert not any(s["levers"]["split_cfg"] for s in cpu)


def test_the_plans_unet_work_is_what_the_run_evaluates(tiny):
    """Plan and run agree on the UNet evaluations, with CFG and without."""
    from hires.costs import model_shape
    from hires.pipeline import generate
    from hires.unet_costs import unet_flops

    unet = model_shape(tiny).unet
    for guidance in (5.0, 1.0):
        result = generate(Job(prompt="a cat", width=512, height=512, steps=2, seed=1,
                              guidance=guidance), components=tiny)
        for stage, report in zip(result.plan.stages, result.stages, strict=True):
            one = unet_flops(unet, stage.height // 8, stage.width // 8)
            assert report.unet_evaluations * one == pytest.approx(
                stage.cost.unet_tflop * 1e12, rel=1e-9), (guidance, stage.index)
