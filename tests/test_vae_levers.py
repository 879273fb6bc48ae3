"""benchmarks/vae_levers.py: its candidates compute the moments hires takes, and it records."""

from __future__ import annotations

import json

import pytest
import torch
from helpers_bench import benchmark


@pytest.fixture(scope="module")
def levers():
    return benchmark("vae_levers")


def emulated_stats(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """What torch.batch_norm_stats returns on CUDA: float32 mean and 1/sqrt(var + eps)."""
    var, mean = torch.var_mean(x.float(), dim=(0, 2, 3), correction=0)
    return mean, torch.rsqrt(var + eps)


@pytest.mark.parametrize("name", ["banded", "bn-stats", "bn-stats-copy", "sum-norm"])
def test_each_candidate_gives_the_windows_moments(levers, monkeypatch, name):
    monkeypatch.setattr(levers.torch, "batch_norm_stats", emulated_stats)
    x = levers.activations(8, 24, torch.device("cpu"), torch.float32)
    crop = x[:, :, 3:19, 5:21]  # not contiguous, as a tile's owned window
    want_var, want_mean = torch.var_mean(crop.double(), dim=(0, 2, 3), correction=0)
    mean, var = levers.MOMENT_FNS[name](crop)
    assert mean.dtype == var.dtype == torch.float64 and mean.shape == (8,)
    assert ((mean - want_mean).abs() / want_var.sqrt()).max() < 1e-5
    # sum-norm's squares cancel at offsets of 30 standard deviations: a looser bound, which
    # the benchmark's error column measures at full size.
    assert ((var - want_var).abs() / want_var).max() < (1e-2 if name == "sum-norm" else 1e-5)


def test_activations_are_channels_last_with_spread_offsets(levers):
    x = levers.activations(16, 32, torch.device("cpu"), torch.bfloat16)
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    var, mean = torch.var_mean(x.double(), dim=(0, 2, 3), correction=0)
    ratio = (mean.abs() / var.sqrt()).max()
    assert 20 < ratio < 40  # offsets up to 30 standard deviations: where squares cancel


def test_smoke_run_records_every_candidate(levers, tmp_path, monkeypatch, capsys):
    def unavailable(x, eps):
        raise NotImplementedError("not on this backend\nmore lines")

    monkeypatch.setattr(levers.torch, "batch_norm_stats", unavailable)
    report = levers.main(["--smoke", "--repeats", "1", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "vae-levers.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert list(saved["moments"]) == list(levers.SMOKE_LEVELS)
    for rows in saved["moments"].values():
        assert list(rows) == list(levers.MOMENTS)
        assert rows["banded"]["ms"] > 0 and rows["banded"]["var_err"] < 1e-5  # bf16 input
        # A candidate that fails on this device is recorded, and the run goes on.
        assert rows["bn-stats"] == {"error": "NotImplementedError: not on this backend"}
        assert rows["sum-norm"]["ms"] > 0
    assert {name: row["equal"] for name, row in saved["copies"].items()} == {
        "today": True, "staged": True}
    printed = capsys.readouterr().out
    assert "| full | bn-stats | failed: NotImplementedError" in printed
    assert "| staged |" in printed
