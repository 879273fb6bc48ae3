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


# --- The exact mode's scratch files: --disk caps them on every device, 0 writes none -------


def _memos(monkeypatch) -> list:
    """Every exact-mode DiskMemo made from here on, kept for its counters."""
    from hires import vae_memo

    made = []
    init = vae_memo.DiskMemo.__init__

    def kept(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(vae_memo.DiskMemo, "__init__", kept)
    return made


def _exact_decode():
    from hires import vae as tiled
    from hires.tiny import tiny_vae

    vae = tiny_vae(trained=False).float()
    z = torch.randn(1, 4, 40, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return tiled.decode_float(vae, z, tile=256, stats="exact")


def test_a_scratch_room_of_0_writes_no_file_and_a_cap_bounds_the_files(monkeypatch):
    """`--disk 0` means never: the passes recompute (the same pixels); a cap bounds the bytes
    the files hold at once. DiskMemo looked at half the free disk alone."""
    from hires.vae_memo import scratch_capped

    memos = _memos(monkeypatch)
    free = _exact_decode()
    (roomy,) = memos
    assert roomy.written > 0
    with scratch_capped(0):
        none = _exact_decode()
    assert memos[1].written == 0 and memos[1].most == 0
    torch.testing.assert_close(none, free, rtol=0, atol=0)
    cap = roomy.most // 2
    with scratch_capped(cap):
        capped = _exact_decode()
    assert 0 < memos[2].most <= cap and memos[2].written < roomy.written
    torch.testing.assert_close(capped, free, rtol=0, atol=0)


def test_a_tmpdir_in_ram_counts_as_no_room(monkeypatch):
    """A TMPDIR on tmpfs (/dev/shm) got the files all the same; the README: no room."""
    from hires import memory

    memos = _memos(monkeypatch)
    monkeypatch.setattr(memory, "_filesystem", lambda folder: "tmpfs")
    _exact_decode()
    assert memos[0].written == 0


def test_a_runs_disk_caps_the_exact_vaes_files_on_the_cpu_too(monkeypatch, tiny):
    """`gen --vae-stats exact --disk 0` on the CPU wrote ~150 MB of scratch at 1024 px (the
    cap reached the VAE only through a GPU's plan, and not even there): now none, the same
    image, and the run's files as the plan counts them."""
    from hires.job import Job
    from hires.pipeline import generate, plan_for

    memos = _memos(monkeypatch)
    job = dict(prompt="a cat", width=512, height=512, steps=2, seed=4, vae_tile=256,
               vae_stats="exact")
    free = generate(Job(**job), components=tiny)
    assert sum(m.written for m in memos) > 0
    del memos[:]
    never = generate(Job(**job, disk=0), components=tiny)
    assert memos and sum(m.written for m in memos) == 0
    assert list(never.image.getdata()) == list(free.image.getdata())
    assert all(s.cost.scratch_bytes == 0 for s in plan_for(Job(**job, disk=0), tiny).stages)
