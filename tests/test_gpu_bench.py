"""Benchmarks' smoke runs on CPU: gpu.py --smoke (the GPU benchmark's whole path, known to work
before a GPU is lent) and cpu_dtype.py --smoke (fp32 against bf16); each writes its JSON.

gpu.py runs as a real process, as it is run (its own set-up handles a missing diffusers); the
others' main() runs in this process with their command line in sys.argv: a second process would
only add its start-up (torch, diffusers: 7-9 s of imports on a 2-core machine) to what is checked.
"""

import json
import subprocess
import sys
from pathlib import Path

from helpers_bench import benchmark

ROOT = Path(__file__).resolve().parent.parent


def _run_main(monkeypatch, tmp_path, name: str, *args: str) -> None:
    """`python benchmarks/NAME.py ARGS` in this process, in `tmp_path`: its main() with that
    sys.argv, and benchmarks/ first on sys.path as for a script (unet_profile imports
    vae_profile); sys.path and the modules it loads are restored after the test."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(ROOT / "benchmarks"), *sys.path])
    if name == "unet_profile":  # imports vae_profile by name: the test's own copy of it
        monkeypatch.setitem(sys.modules, "vae_profile", benchmark("vae_profile"))
    monkeypatch.setattr(sys, "argv", [str(ROOT / "benchmarks" / f"{name}.py"), *args])
    benchmark(name).main()


def test_gpu_benchmark_smoke_run_writes_every_phase(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--smoke", "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["smoke"] and report["device"] == "cpu"

    phases = {(p["phase"], p["stage"]) for p in report["phases"]}
    assert phases == {("text-encode", 0), ("denoise", 0), ("vae-decode", 0), ("resize", 1),
                      ("vae-encode", 1), ("denoise", 1), ("vae-decode", 1), ("save", 1)}
    for p in report["phases"]:
        assert p["seconds"] >= 0 and p["peak_gpu_gb"] is None  # no GPU memory on CPU
        if p["phase"] in ("resize", "save"):
            assert p["flops"] is None and p["tflop_per_s"] is None
        else:
            assert p["flops"] > 0 and p["tflop_per_s"] >= 0
        if p["phase"].startswith("vae-"):  # what the tiled VAE ran, at least the image's work
            assert p["memo_budget"] > 0 and p["work_flops"] > 0.9 * p["flops"]
            assert p["work_tflop_per_s"] >= 0
    assert [s["size"] for s in report["stages"].values()] == ["256x256", "512x512"]
    # CFG 2 in both stages; an upscale step runs the global pass too while its weight counts.
    ran = list(report["stages"].values())
    assert [s["unet_evaluations"] for s in ran] == [2 * s["steps"] for s in ran[:1]] + [
        2 * (s["steps"] + s["global_steps"]) for s in ran[1:]]
    assert 0 < ran[1]["global_steps"] < ran[1]["steps"]  # smoke: the first of 2 steps
    # The planner's memory beside the measured (none on a CPU): a stage takes at least its peak.
    for s in ran:
        assert s["measured_peak_gb"] is None
        assert 0 < s["planned_peak_gb"] <= s["planned_used_gb"]
    assert "| stage | size | planned peak GB |" in done.stdout

    # The UNet's FLOPs grow with the latent (LinFusion keeps it linear): b > 0 dominates.
    unet = report["flops"]["unet_per_evaluation"]
    assert unet["b_per_latent_pixel"] > 0 and unet["a"] >= 0
    assert report["flops"]["vae_decode_per_pixel"] > report["flops"]["vae_encode_per_pixel"] > 0

    projection = report["projection"]
    assert projection["total_seconds"] > report["total_seconds"]  # 50 steps instead of 2
    assert [p["phase"] for p in projection["phases"]] == [p["phase"] for p in report["phases"]]

    # The memory levers against the plain path: every one ran and gave the same result.
    assert "levers_error" not in report, report["levers_error"]
    checks = [r["check"] for r in report["levers"]]
    assert len(checks) == 13 and all(r["ok"] for r in report["levers"]), report["levers"]
    assert any("on disk" in c for c in checks)
    assert any("swept in blocks" in c for c in checks) and any("SDPA" in c for c in checks)
    assert any("sequential-offload" in c for c in checks)
    spills = [r for r in report["levers"] if "spilled" in r["check"]]
    assert len(spills) == 2 and all(r["spilled_mb"] > 0 for r in spills)

    attention = report["attention"]
    assert "error" not in attention, attention
    assert {r["impl"] for r in attention["results"]} == {"linear", "sdpa"}
    assert (tmp_path / "gpu-attention.json").is_file()


def test_cpu_dtype_benchmark_smoke_run_times_both_dtypes(tmp_path, monkeypatch, capsys):
    out = tmp_path / "cpu-dtype.json"
    _run_main(monkeypatch, tmp_path, "cpu_dtype", "--smoke", "--unet-size", "256",
              "--out", str(out))
    report = json.loads(out.read_text())
    assert [r["dtype"] for r in report["results"]] == ["fp32", "bf16"]
    for r in report["results"]:
        assert r["unet_s"] > 0 and r["vae_decode_s"] > 0
    assert "bf16 speed-up" in capsys.readouterr().out


def _gpu_bench():
    """benchmarks/gpu.py as a module."""
    return benchmark("gpu")


def test_vae_work_replays_the_spill_where_the_plan_spilled():
    """A VAE row's work is replayed with the CPU memory its stage spilled to, not without."""
    from types import SimpleNamespace

    from hires.costs import VaeShape
    from hires.tiny import tiny_vae
    from hires.vae_cost import tiled_flops

    gpu = _gpu_bench()
    config = tiny_vae(trained=False).config

    def stage(spills: bool, most: float = 5e6):  # 5e6: more than the pass had (3e6)
        return SimpleNamespace(cost=SimpleNamespace(vae_spill_bytes=most if spills else 0.0,
                                                    vae_tile=256))

    row = dict(phase="vae-decode", stage=1, width=768, height=576, memo_budget=1e6,
               spill_budget=3e6)
    job = SimpleNamespace(vae_tile=None)
    shape = VaeShape.from_config(config)
    kept, spilled = (tiled_flops(shape, 768, 576, decode=True, tile=256, budget=1e6, spill=s,
                                 dtype_bytes=2) for s in (0.0, 3e6))
    assert spilled < kept  # the case tells the two apart
    for spills, want in ((True, spilled), (False, kept)):
        plan = SimpleNamespace(stages=[stage(False), stage(False), stage(spills)])
        assert gpu.vae_work(row, job, plan, config, 2) == want  # stage 1 decodes for stage 2
    # A plan that spills less than the pass could: replayed with the plan's share.
    less = tiled_flops(shape, 768, 576, decode=True, tile=256, budget=1e6, spill=1e6,
                       dtype_bytes=2)
    assert spilled < less < kept
    plan = SimpleNamespace(stages=[stage(False), stage(False), stage(True, 1e6)])
    assert gpu.vae_work(row, job, plan, config, 2) == less


def _profile_smoke(monkeypatch, tmp_path, script: str, stem: str) -> dict:
    """Run a profile benchmark's --smoke mode; its JSON report (the text tables checked)."""
    _run_main(monkeypatch, tmp_path, script, "--smoke", "--out", str(tmp_path))
    assert "### by host time" in (tmp_path / f"{stem}.txt").read_text()
    return json.loads((tmp_path / f"{stem}.json").read_text())


def test_vae_profile_smoke_run_writes_both_tables(tmp_path, monkeypatch):
    report = _profile_smoke(monkeypatch, tmp_path, "vae_profile", "vae-profile")
    assert set(report["passes"]) == {"decode", "encode"}
    for run in report["passes"].values():
        assert run["seconds"] > 0 and run["by_device"] and run["by_host"]
        assert any("conv" in op["op"] for op in run["by_device"])


def test_unet_profile_smoke_run_times_and_profiles_an_evaluation(tmp_path, monkeypatch):
    report = _profile_smoke(monkeypatch, tmp_path, "unet_profile", "unet-profile")
    (run,) = report["latents"].values()
    assert run["seconds_per_evaluation"] > 0 and run["by_device"] and run["by_host"]
    assert any("conv" in op["op"] for op in run["by_device"])


def test_memory_table_counts_a_decode_in_the_stage_that_plans_it():
    """A stage's plan counts the decode of its previous image; progress labels that decode
    with the stage it decodes (the H200's 8K decode looked 20 GB over stage 3's plan)."""
    gpu = _gpu_bench()
    assert gpu.plan_stage_of({"phase": "vae-decode", "stage": 3}, 4) == 4
    assert gpu.plan_stage_of({"phase": "vae-decode", "stage": 4}, 4) == 4  # the final decode
    assert gpu.plan_stage_of({"phase": "vae-encode", "stage": 3}, 4) == 3
    assert gpu.plan_stage_of({"phase": "denoise", "stage": 0}, 4) == 0
