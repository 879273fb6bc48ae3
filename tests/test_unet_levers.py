"""benchmarks/unet_levers.py: its candidate levers compute what hires computes, and undo."""

from __future__ import annotations

import json

import pytest
import torch
from helpers_bench import benchmark
from torch import nn

import hires.linfusion as linfusion


@pytest.fixture(scope="module")
def levers():
    return benchmark("unet_levers")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_wide_group_norm_is_group_norm(levers, dtype):
    torch.manual_seed(0)
    norm = nn.GroupNorm(4, 16, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = (torch.randn(2, 16, 12, 10) * 3 + 1).to(dtype)
    with torch.no_grad():
        want = norm.to(dtype)(x).float()
        got = levers.wide_group_norm(norm, x)
    assert got.dtype == dtype and got.shape == x.shape
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # bf16: its own rounding
    assert (got.float() - want).abs().max() <= tol * want.abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mixed_linear_attention_is_linfusions(levers, dtype):
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 300, 64).to(dtype) for _ in range(3))
    want = linfusion.linear_attention(q, k, v, heads=4).float()
    got = levers.mixed_linear_attention(q, k, v, heads=4)
    assert got.dtype == dtype and got.shape == q.shape
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert (got.float() - want).abs().max() <= tol * want.abs().max()


def test_the_levers_are_undone_after_their_block(levers):
    unet = nn.Sequential(nn.GroupNorm(2, 4), nn.Conv2d(4, 4, 1))
    plain = linfusion.linear_attention
    with levers.levers("both", unet):
        assert linfusion.linear_attention is levers.mixed_linear_attention
        assert "forward" in vars(unet[0])
    assert linfusion.linear_attention is plain
    assert "forward" not in vars(unet[0])


def test_smoke_run_writes_each_variant_against_plain(levers, tmp_path, monkeypatch):
    def no_compiler(module, **options):  # as torch.compile fails without its compiler
        def call(*args, **kwargs):
            raise RuntimeError("no compiler here\nmore lines")
        return call

    monkeypatch.setattr(levers.torch, "compile", no_compiler)
    report = levers.main(["--smoke", "--variants", "both", "compile", "--repeats", "1",
                          "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "unet-levers.json").read_text())
    assert saved == json.loads(json.dumps(report))
    rows = saved["latents"]["16"]
    assert list(rows) == ["plain", "both", "compile"]  # plain first: the reference
    assert rows["plain"]["max_rel_diff"] == 0
    # Both levers on the tiny model's UNet (fp32): the same noise prediction, by another path.
    assert 0 < rows["both"]["max_rel_diff"] < 1e-4
    assert rows["both"]["seconds"] > 0 and rows["both"]["speedup"] > 0
    # A lever that fails on this device is recorded, and the run goes on.
    assert rows["compile"] == {"error": "RuntimeError: no compiler here"}
    table = (tmp_path / "unet-levers.md").read_text()
    assert "| 16^2 | both |" in table and "| 16^2 | compile | failed: " in table
