"""`hires plan` and `gen --dry-run`: a real dry run of the planner, without weights."""

import json

import pytest
import torch
from helpers_cli import assert_usage_error, cli, error_lines
from PIL import Image

from hires.gpus import EFFICIENCY, VAE_SHARE

GIB = 1024**3
KEYS = {"index", "width", "height", "steps", "strategy", "peak_bytes", "tflop", "scratch_bytes",
        "seconds"}


def plan_json(*args):
    result = cli("plan", *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_plan_json_has_every_field_and_fits_the_budget():
    p = plan_json("a lighthouse", "--size", "16384", "--vram", "24", "--gpu", "h200",
                  "--seed", "3")
    assert {"width", "height", "stages", "peak_bytes", "seconds"} <= set(p)
    assert (p["width"], p["height"]) == (16384, 16384)
    assert [s["index"] for s in p["stages"]] == list(range(5))
    for s in p["stages"]:
        assert KEYS <= set(s)
        assert s["peak_bytes"] <= 24 * GIB and s["tflop"] > 0 and s["seconds"] > 0
    assert p["peak_bytes"] == max(s["peak_bytes"] for s in p["stages"])
    assert abs(p["seconds"] - sum(s["seconds"] for s in p["stages"])) < 0.01
    assert p["stages"][-1]["strategy"] != "batched"  # 16K on 24 GB needs levers


def test_a_smaller_budget_changes_the_plan_and_a_preset_carries_its_budget():
    big = plan_json("--size", "16384", "--vram", "80")
    small = plan_json("--preset", "16k-24gb")
    # a 24 GB card's budget as --gpu plans one (its memory less the CUDA context), not all 24
    assert small["budget_bytes"] == plan_json("--size", "16384", "--gpu", "4090")["budget_bytes"]
    assert big["stages"][-1]["strategy"] != small["stages"][-1]["strategy"]
    assert small["peak_bytes"] < big["peak_bytes"] and small["seconds"] > big["seconds"]


def test_a_faster_gpu_gives_a_shorter_estimate():
    assert plan_json("--size", "4096", "--gpu", "h100")["seconds"] < \
        plan_json("--size", "4096", "--gpu", "4090")["seconds"]
    assert plan_json("--size", "4096", "--gpu", "500")["tflops"] == 500


def test_a_plan_that_cannot_fit_says_what_would_and_exits_2():
    # 8K on 3.5 GiB: its 4K stage does not fit even offloaded (16K on 6 GiB, refused the same
    # way, took 5 s more for its search of the size that fits).
    result = cli("plan", "--size", "8192", "--vram", "3.5", "--ram", "64")
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert "GiB" in line and "fits" in line
    assert line.endswith("try a larger --vram")  # not --offload auto: it was, and tried all
    (line,) = cli("plan", "--size", "8192", "--vram", "3.5", "--ram", "64", "--offload",
                  "none").stderr.strip().splitlines()
    assert line.endswith("try a larger --vram or --offload auto")


def test_gen_dry_run_is_the_plan_and_loads_nothing(tmp_path):
    out = tmp_path / "x.png"
    card = ("--gpu", "h100", "--vram", "24")
    dry = cli("gen", "x", "--size", "8192", *card, "--dry-run", "--json", "-o", out)
    assert dry.exit_code == 0, dry.stderr
    planned = json.loads(dry.stdout)
    assert [i["path"] for i in planned.pop("images")] == [str(out)]  # what it would write
    assert planned == plan_json("x", "--size", "8192", *card)
    assert not out.exists()


def test_a_dry_run_without_a_gpu_plans_the_cpu_run_that_would_happen(tmp_path, monkeypatch):
    """It planned an H100 (exit 0) where the run, on the CPU, would not fit and exit 2; a
    named card still plans that card, and `hires plan` (for other machines) an H100."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = ("x", "--size", "2048", "--ram", "64", "--json")

    def planned_on(*cmd: str) -> str:
        result = cli(*cmd)
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)["gpu"]

    assert planned_on("gen", *args, "--dry-run") == "cpu"
    assert planned_on("gen", *args, "--dry-run", "--device", "cpu") == "cpu"
    assert planned_on("gen", *args, "--dry-run", "--gpu", "a100") == "a100"
    assert planned_on("plan", *args) == "h100"
    photo = tmp_path / "in.png"
    Image.new("RGB", (256, 256)).save(photo)
    assert planned_on("up", str(photo), "--scale", "4", "--ram", "64", "--json",
                      "--dry-run") == "cpu"
    # --ram is the CPU run's budget: 20 GiB holds SDXL at 1K, not at 8K (the VAE's dtype
    # fixed: 'auto' is bf16 on CPUs with fast bf16, and what fits then is larger)
    too_big = cli("gen", "x", "--size", "8192", "--ram", "20", "--vae-dtype", "fp32",
                  "--dry-run", "-o", tmp_path / "y.png")
    assert too_big.exit_code == 2 and "5824x5824 fits" in too_big.stderr


def test_plan_text_names_strategy_memory_and_time():
    result = cli("plan", "--size", "8192", "--aspect", "16:9", "--vram", "24")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("8192x4608") and "24.0 GiB budget" in lines[0]
    assert lines[1].startswith("settings: a random seed")
    assert "1344x768" in lines[2]  # the ~1 MP base at 16:9
    assert all("GiB" in line and "TFLOP" in line for line in lines[2:-1])
    assert lines[-1].startswith("total:")


def test_a_long_plan_says_its_time_in_minutes_too():
    result = cli("plan", "--size", "16384", "--gpu", "4090", "--ram", "64")
    assert result.exit_code == 0, result.stderr
    total = result.stdout.strip().splitlines()[-1]
    seconds = float(total.split("~")[1].split(" s")[0])
    assert f"(~{round(seconds / 60)} min, VAE ~" in total


def test_unknown_gpu_is_a_usage_error():
    result = cli("plan", "--size", "2048", "--gpu", "toaster")
    assert result.exit_code == 2 and "h100" in result.stderr


def test_cuda_without_cuda_is_a_usage_error_before_loading(tmp_path):
    result = cli("gen", "x", "--model", "tiny", "--device", "cuda", "-o", tmp_path / "x.png")
    assert result.exit_code == 2
    assert "--device cpu" in result.stderr


def test_an_fp32_vae_is_planned_with_its_memory_and_work():
    # --vae-dtype reaches the planner: fp32 doubles the VAE's tiles and kept outputs, so at
    # 24 GB the 16K stage either peaks higher or recomputes more (a smaller tile, more work).
    args = ("x", "--size", "16384", "--vram", "24", "--gpu", "4090")
    bf16, fp32 = plan_json(*args), plan_json(*args, "--vae-dtype", "fp32")
    same = plan_json(*args, "--vae-dtype", "bf16")
    assert same.pop("job")["vae_dtype"] == "bf16" and bf16.pop("job")["vae_dtype"] == "auto"
    assert same == bf16  # auto is bf16 on a GPU
    last16, last32 = bf16["stages"][-1], fp32["stages"][-1]
    assert last32["tflop"] > last16["tflop"] or last32["peak_bytes"] > last16["peak_bytes"]


def test_ram_bounds_what_a_plan_parks_and_a_short_one_says_so():
    p = plan_json("--size", "16384", "--vram", "12", "--ram", "48", "--gpu", "4090")
    assert all(s["host_bytes"] <= 48 * GIB for s in p["stages"])
    assert p["stages"][-1]["levers"]["park_skips"]
    short = cli("plan", "--size", "16384", "--vram", "12", "--ram", "16", "--disk", "0")
    assert short.exit_code == 2
    (line,) = short.stderr.strip().splitlines()
    assert "CPU's memory" in line and "--ram" in line and "fits" in line
    assert "parked maps that RAM cannot hold wait on a disk" in line and "--disk" in line
    # With room on a disk, the maps RAM cannot hold wait there instead.
    disk = plan_json("--size", "16384", "--vram", "12", "--ram", "16", "--disk", "40")
    last = disk["stages"][-1]
    assert 0 < last["disk_bytes"] <= 40e9 and last["disk_bytes"] < last["parked_bytes"]
    assert last["host_bytes"] - last["disk_bytes"] <= 16 * GIB
    bad = cli("plan", "--size", "4096", "--ram", "0")
    assert bad.exit_code == 2 and "ram must be a positive number" in bad.stderr
    bad = cli("plan", "--size", "4096", "--disk", "-1")
    assert bad.exit_code == 2 and "disk must be 0 (never) or a positive number" in bad.stderr


def test_the_disk_room_is_where_to_run_not_what_is_made():
    from hires.batch import settings_hash
    from hires.job import Job

    assert settings_hash(Job(prompt="x", seed=1, disk=40)) == settings_hash(Job(prompt="x", seed=1))


def test_ram_for_vae_outputs_is_shown_only_where_a_stage_spills():
    # A 4090 recomputes slower than it copies: its 16K stage keeps VAE outputs in RAM. An H100
    # recomputes faster, so no stage spills and the plan must not claim RAM for it.
    args = ("x", "--size", "16384", "--ram", "64")
    slow = cli("plan", *args, "--vram", "24", "--gpu", "4090")
    fast = cli("plan", *args, "--vram", "80", "--gpu", "h100")
    assert slow.exit_code == fast.exit_code == 0
    header, _, *stages = slow.stdout.splitlines()
    assert "RAM for VAE outputs" in header and "VAE outputs in RAM" in stages[4]
    assert "VAE outputs" not in fast.stdout
    spills = [s["vae_spill"] for s in plan_json(*args, "--vram", "24", "--gpu", "4090")["stages"]]
    assert spills[-1] and not any(spills[:-1])
    h100 = plan_json(*args, "--vram", "80", "--gpu", "h100")["stages"]
    assert not any(s["vae_spill"] for s in h100)


def test_the_vae_share_of_each_stage_time_is_its_work_at_the_rate():
    """The tiled VAE runs at VAE_SHARE of the UNet's rate (measured on an H200), plus each tile
    run's host work (gpus.TILE_RUN_SECONDS): a few per cent of it."""
    p = plan_json("x", "--size", "8192", "--vram", "80", "--gpu", "100")  # 100 TFLOP/s
    for s in p["stages"]:
        vae_rate = 100 * VAE_SHARE
        runs = s["vae_seconds"] - (s["tflop"] - s["unet_tflop"]) / vae_rate
        assert -1e-3 * s["seconds"] < runs < 0.05 * s["vae_seconds"] + 1e-3
        assert 0 <= s["vae_seconds"] < s["seconds"]
    assert p["stages"][-1]["vae_seconds"] > 0  # the last stage decodes the image
    assert abs(p["vae_seconds"] - sum(s["vae_seconds"] for s in p["stages"])) < 0.01
    text = cli("plan", "x", "--size", "8192", "--vram", "80", "--gpu", "100").stdout
    assert f"VAE ~{p['vae_seconds']:.0f} s, host ~{p['host_seconds']:.0f} s)" in \
        text.splitlines()[-1]


def test_a_named_gpu_is_planned_with_its_memory_unless_vram_says():
    args = ("x", "--size", "16384", "--ram", "64")
    card = plan_json(*args, "--gpu", "4090")
    assert card["budget_from"] == "gpu" and card["budget_bytes"] == int(23.5 * GIB)
    assert all(s["peak_bytes"] <= 23.5 * GIB for s in card["stages"])
    named = plan_json(*args, "--gpu", "RTX 4090")  # the card's full name is the card
    assert named.pop("gpu") == "RTX 4090" and named == {k: v for k, v in card.items() if k != "gpu"}
    given = plan_json(*args, "--gpu", "4090", "--vram", "80")
    assert given["budget_from"] == "vram" and given["budget_bytes"] == 80 * GIB
    assert given["seconds"] < card["seconds"]  # 80 GiB needs fewer levers
    twelve = plan_json(*args, "--gpu", "3060")
    assert twelve["budget_bytes"] == int(11.5 * GIB) and twelve["tflops"] == 25 * EFFICIENCY
    assert plan_json(*args, "--gpu", "500")["budget_from"] is None  # a rate names no memory
    assert "(--gpu NAME or --vram GiB sets one)" in cli("plan", *args).stdout.splitlines()[0]
    header = cli("plan", *args, "--gpu", "4090").stdout.splitlines()[0]
    assert "23.5 GiB budget (the 4090's 24.0 GiB less 0.5 for CUDA" in header


def test_a_card_number_not_in_the_table_is_not_read_as_tflops():
    result = cli("plan", "--size", "4096", "--gpu", "3050")
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert "3060" in line and "--vram" in line


def test_a_cards_full_name_plans_it_and_another_memory_size_says_vram(tmp_path):
    """'H100 80GB HBM3', 'A100-SXM4-80GB' (nvidia-smi's names) were unknown cards, and an
    A100 40GB owner had no word on --vram (QA 190)."""
    h100 = plan_json("--size", "4096", "--gpu", "h100")
    for name in ("H100 80GB HBM3", "NVIDIA H100-SXM5-80GB", "h100 80"):
        assert plan_json("--size", "4096", "--gpu", name)["stages"] == h100["stages"], name
    # another memory size than the table's is that card with that memory (as its driver
    # reports it, less the CUDA context), at the card's rate: a refusal's --vram advice then
    # drew a warning that the budget passed the table's card (QA 192)
    a100 = plan_json("--size", "4096", "--gpu", "a100")
    for name, gib in (("a100-40gb", 39.2), ("NVIDIA A100-PCIE-40GB", 39.2),
                      ("Tesla V100-SXM2-32GB", 31.4), ("3060 8GB", 7.8)):
        planned = cli("plan", "--size", "4096", "--gpu", name)
        assert planned.exit_code == 0 and "warning" not in planned.stderr, planned.stderr
        assert f"GiB budget (the {name}'s {gib} GiB less 0.5 for CUDA; " in planned.stdout
        assert plan_json("--size", "4096", "--gpu", name)["budget_bytes"] == \
            pytest.approx((gib - 0.5) * GIB, rel=1e-6)
    assert plan_json("--size", "4096", "--gpu", "a100-40gb")["tflops"] == a100["tflops"]
    # a card's own sold size is the table's card, whatever ECC takes (QA 191)
    for name, key in (("L4 24GB", "l4"), ("NVIDIA L40S 48GB", "l40s"), ("Tesla T4 16GB", "t4"),
                      ("NVIDIA A100 80GB PCIe", "a100"), ("4090 24GiB", "4090"),
                      ("4090-24G", "4090")):
        assert plan_json("--size", "2048", "--gpu", name)["stages"] == \
            plan_json("--size", "2048", "--gpu", key)["stages"], name
    # words that name another card (slower, or less memory) stay unknown, as do sizes no
    # card has
    for name in ("h100 pcie", "4090 laptop", "4070 ti", "4090 4080", "Tesla V100-PCIE-16GB",
                 "h100 0", "h100 99999999gb"):
        assert_usage_error(cli("plan", "--size", "4096", "--gpu", name), f"unknown GPU '{name}'")


def test_the_local_gpu_is_the_longest_name_it_contains(monkeypatch):
    import torch

    from hires.gpus import local_gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name, key in [("NVIDIA A100-SXM4-80GB", "a100"), ("NVIDIA L40S", "l40s"),
                      ("NVIDIA A10", "a10"), ("Tesla T4", "t4"), ("Tesla V100-SXM2-16GB", "v100"),
                      ("NVIDIA GeForce RTX 4070 Ti", "4070"), ("NVIDIA H200", "h200"),
                      ("NVIDIA GeForce GTX 1080", None)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, n=name: n)
        assert local_gpu() == key, name


def test_a_card_without_native_bf16_is_planned_with_an_fp32_vae():
    # A T4 emulates bf16, so hires.models.choose_vae_dtype gives its VAE fp32 whatever is
    # asked; a card of its memory and rate with bf16 plans a lighter VAE.
    args = ("x", "--size", "16384", "--ram", "64")
    t4 = plan_json(*args, "--gpu", "t4")
    assert plan_json(*args, "--gpu", "t4", "--vae-dtype", "bf16")["stages"] == t4["stages"]
    assert plan_json(*args, "--gpu", "t4", "--vae-dtype", "fp32")["stages"] == t4["stages"]
    same = plan_json(*args, "--gpu", "26", "--vram", "14.5")["stages"][-1]
    assert t4["stages"][-1]["tflop"] > same["tflop"] or \
        t4["stages"][-1]["peak_bytes"] > same["peak_bytes"]


def test_fp32_work_is_timed_at_the_cards_fp32_rate():
    # Tensor cores run TF32 at half the bf16 rate: the same work in fp32 takes twice as long
    # (2048 px on an H200: every stage batched and resident, nothing copied).
    half = plan_json("x", "--size", "2048", "--gpu", "h200")
    full = plan_json("x", "--size", "2048", "--gpu", "h200", "--dtype", "fp32")
    assert [s["strategy"] for s in full["stages"]] == [s["strategy"] for s in half["stages"]]
    assert full["fp32"] == ["unet", "vae"] and half["fp32"] == []
    # The VAE's part exactly twice; the whole less (the host's resize and save, and the 1K
    # stage's launch-bound calls, do not slow down).
    assert abs(full["vae_seconds"] - 2 * half["vae_seconds"]) < 0.01
    assert half["seconds"] < full["seconds"] < 2 * half["seconds"]
    # A T4 has no TF32: its fp32 VAE runs on CUDA cores at 8.1 of its 65 TFLOP/s.
    t4 = plan_json("x", "--size", "2048", "--gpu", "t4", "--vram", "15")
    assert t4["fp32"] == ["vae"] and t4["vae_spill_bytes"] == 0
    vae_tflop = sum(s["tflop"] - s["unet_tflop"] for s in t4["stages"])
    assert abs(t4["fp32_tflops"] - 8.1 * EFFICIENCY) < 1e-3  # rounded in the JSON
    vae_tflop /= VAE_SHARE  # the tiled VAE's own share of the rate
    assert abs(t4["vae_seconds"] - vae_tflop / t4["fp32_tflops"]) < 0.05


def test_the_cards_table_is_the_plan_of_each_card(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "plan_cards.py"
    spec = importlib.util.spec_from_file_location("plan_cards", path)
    cards = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cards)
    out = tmp_path / "cards.json"
    cards.main(["--size", "8192", "--ram", "4", "64", "--cards", "4090", "3060", "--disk", "0",
                "--out", str(out)])
    rows = json.loads(out.read_text())["cards"]
    want = plan_json("x", "--size", "8192", "--ram", "64", "--gpu", "4090")
    assert rows["4090"]["64"]["seconds"] == round(want["seconds"], 1)
    assert rows["3060"]["4"]["fits"] is False and rows["3060"]["4"]["ram_short"]
    assert rows["3060"]["4"]["largest"] < 8192
    cards.main(["--size", "16384", "--ram", "16", "--cards", "3060", "--disk", "100",
                "--out", str(out)])
    on_disk = json.loads(out.read_text())["cards"]["3060"]["16"]
    assert on_disk["fits"] and 0 < on_disk["disk_gb"] <= 100
    table = capsys.readouterr().out.splitlines()
    # RAM in GiB, as the header's "GiB of RAM free" and `--ram` count it.
    want = plan_json("x", "--size", "16384", "--ram", "16", "--gpu", "3060", "--disk", "100")
    host = max(s["host_bytes"] - s["disk_bytes"] for s in want["stages"]) / 1024**3
    assert on_disk["ram_gib"] == round(host, 1) and f"RAM {host:.0f} / " in table[-1]
    assert table[-1].count("GiB") == 2  # the card's memory and the RAM
    assert table[2].startswith("| 4090 | 24 GiB | ~") and "px fits" in table[3]
    # A card without native bf16 gets a second row, with a VAE made for fp16.
    cards.main(["--size", "2048", "--ram", "64", "--cards", "t4", "--out", str(out)])
    rows = json.loads(out.read_text())["cards"]
    fixed = rows["t4 with `--vae madebyollin/sdxl-vae-fp16-fix`"]["64"]
    want = plan_json("x", "--size", "2048", "--ram", "64", "--gpu", "t4",
                     "--vae", "madebyollin/sdxl-vae-fp16-fix")
    assert fixed["seconds"] == round(want["seconds"], 1) < rows["t4"]["64"]["seconds"]


def test_a_plan_imports_no_model_library():
    """SDXL is planned from its configs: diffusers and transformers (seconds to import) stay
    out of `hires plan`."""
    import subprocess
    import sys

    from helpers_cli import REPO, subprocess_env

    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "hires", "plan", "x",
                             "--size", "16384", "--gpu", "4090", "--json"], capture_output=True,
                            text=True, env=subprocess_env(), cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["stages"]
    imported = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "torch" in imported  # the check sees imports
    assert not {m for m in imported if m.split(".")[0] in ("diffusers", "transformers")}


def test_a_dry_run_stops_where_the_run_would_stop_on_its_outputs(tmp_path):
    from helpers_cli import assert_usage_error

    taken = tmp_path / "taken.png"
    taken.write_bytes(b"someone's file")
    assert_usage_error(cli("gen", "x", "--dry-run", "-o", taken), "already exists")
    assert_usage_error(cli("gen", "x", "--size", "20000", "--dry-run", "-o", tmp_path / "a.webp"),
                       "WebP")
    assert_usage_error(cli("gen", "-", "--n", "2", "--dry-run", "-o", tmp_path / "one.png",
                           input="a fox\n"), "folder or a template")
    fine = cli("gen", "x", "--dry-run", "-o", tmp_path / "new.png")
    assert fine.exit_code == 0 and fine.stdout.startswith("1024x1024:")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.png"]  # nothing left behind


def test_a_plan_the_ram_limits_says_what_more_would_save():
    small = cli("plan", "--size", "16384", "--gpu", "4090", "--ram", "16")
    assert small.exit_code == 0
    (line,) = [x for x in small.stderr.splitlines() if "RAM limits" in x]
    assert line.startswith("the RAM limits this plan: with 64 GiB of RAM free, ~")  # --ram's
    assert "--ram 64 plans that" in line
    roomy = plan_json("--size", "16384", "--gpu", "4090", "--ram", "64")
    assert f"~{round(roomy['seconds'] / 60)} min instead of" in line
    for args in (("--gpu", "4090", "--ram", "64"), ("--gpu", "h200", "--ram", "16")):
        assert "RAM limits" not in cli("plan", "--size", "16384", *args).stderr


def test_a_json_plan_carries_the_hints_the_text_plan_says():
    """`plan --json` dropped them: a script could not read what more RAM would take."""
    args = ("--size", "16384", "--gpu", "4090", "--ram", "16")
    text = cli("plan", *args)
    said = [line for line in text.stderr.splitlines() if line.strip()]
    as_json = cli("plan", *args, "--json")
    assert as_json.exit_code == 0, as_json.stderr
    hints = json.loads(as_json.stdout)["hints"]
    assert any(h.startswith("the RAM limits this plan") for h in hints)
    assert all(h in said for h in hints) and all(h in as_json.stderr for h in hints)
    assert plan_json("--size", "1024")["hints"] == []


def test_an_exact_plan_says_what_fast_would_take():
    """`--vae-stats exact` makes the pixels `fast` makes, in scratch files and recomputation:
    the plan says what the default would take, where it is faster."""
    exact = cli("plan", "--size", "16384", "--gpu", "h200", "--vae-stats", "exact")
    assert exact.exit_code == 0, exact.stderr
    (line,) = [x for x in exact.stderr.splitlines() if "--vae-stats exact" in x]
    fast, slow = (plan_json("--size", "16384", "--gpu", "h200", "--vae-stats", mode)["seconds"]
                  for mode in ("fast", "exact"))
    assert fast < 0.5 * slow
    assert (f"same pixels as fast (the default), which plans at ~{round(fast / 60)} min "
            f"instead of ~{round(slow / 60)} min here") in line
    # --vram: a CPU plan's budget is otherwise the free RAM, which a busy machine may lack
    cpu = ("--device", "cpu", "--vram", "64")
    for args in (("--vae-stats", "fast"), ("--vae-stats", "exact", *cpu)):
        result = cli("plan", "--size", "4096", *args)
        assert result.exit_code == 0 and "--vae-stats exact" not in result.stderr


def test_a_cpu_plan_fits_the_free_ram_and_claims_no_time():
    """`--device cpu` is planned as a CPU run plans it (in the free RAM), and not timed at a
    GPU's rate: a CPU's is not known unless --gpu gives a figure."""
    result = cli("plan", "--size", "2048", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    header, *_, total = result.stdout.splitlines()
    assert "GiB budget (the free RAM)" in header and "no times: a CPU's rate is not known" in header
    assert " s" not in total and "h100" not in result.stdout
    p = plan_json("--size", "2048", "--device", "cpu")
    assert p["seconds"] is None and p["tflops"] is None and p["budget_from"] == "device"
    assert all(s["seconds"] is None and s["peak_bytes"] <= p["budget_bytes"]
               for s in p["stages"])
    timed = cli("plan", "--size", "2048", "--device", "cpu", "--gpu", "0.5").stdout
    assert "times at 0.5 TFLOP/s (--gpu 0.5; host work on" in timed
    assert "~" in timed.splitlines()[-1]


def test_a_long_plan_suggests_a_preview_first():
    long = cli("plan", "--size", "16384", "--gpu", "4090")
    assert long.exit_code == 0, long.stderr
    # `hires gen --preview` as it stood lacked the prompt and the size: not a command to run
    assert "a long job: --preview added to the gen command makes its composition first, in ~" \
        in long.stderr
    for args in (("--gpu", "h100"), ("--gpu", "4090", "--size", "2048")):  # minutes, not more
        quick = cli("plan", "--size", "16384", *args)
        assert "--preview" not in quick.stderr, args
    # one stage, however long: its preview is the whole job (it offered "~6 h 47 min")
    one = cli("plan", "--size", "1024", "--gpu", "0.5", "--steps", "1000")
    assert "~6 h" in one.stdout and "--preview" not in one.stderr


def test_the_plan_counts_the_memory_the_vae_keeps_outputs_in():
    """The fast VAE keeps tiles' outputs in a share of what is free: on a big card the stage
    takes far more than its peak need. The plan says how much, within the card."""
    h200 = plan_json("--size", "16384", "--gpu", "h200")
    last = h200["stages"][-1]
    assert last["peak_bytes"] < last["used_bytes"] <= h200["budget_bytes"]
    assert h200["used_bytes"] == max(s["used_bytes"] for s in h200["stages"])
    assert h200["stages"][0]["used_bytes"] == h200["stages"][0]["peak_bytes"]  # no tiled VAE
    text = cli("plan", "--size", "16384", "--gpu", "h200").stdout.splitlines()[-1]
    assert f"({h200['used_bytes'] / GIB:.1f} with the VAE's kept outputs)" in text
    # The exact mode keeps them in files instead: nothing more on the card.
    exact = plan_json("--size", "16384", "--gpu", "h200", "--vae-stats", "exact")
    assert all(s["used_bytes"] == s["peak_bytes"] for s in exact["stages"])
    for card in ("4090", "3060"):
        small = plan_json("--size", "8192", "--gpu", card)
        assert all(s["used_bytes"] <= small["budget_bytes"] for s in small["stages"])


def test_the_hosts_share_of_each_stage_time_is_its_resize_and_save():
    """A stage's host seconds: the resize to its size (every stage after the base) and, in the
    last, the save, on this machine's cores; shown beside the VAE's share."""
    from hires.costs import host_seconds

    p = plan_json("x", "--size", "4096", "--vram", "80", "--gpu", "h200")
    sizes = [(s["width"], s["height"]) for s in p["stages"]]
    want = [host_seconds(w, h, resize=i > 0, save=i == len(sizes) - 1)
            for i, (w, h) in enumerate(sizes)]
    assert [s["host_seconds"] for s in p["stages"]] == [round(t, 3) for t in want]
    assert want[-1] > 0 and abs(p["host_seconds"] - sum(want)) < 0.01
    assert all(s["host_seconds"] < s["seconds"] for s in p["stages"])
    # no rate: no times at all (--vram: not the free RAM, which a busy machine may lack)
    cpu = plan_json("x", "--size", "4096", "--device", "cpu", "--vram", "64")
    assert cpu["host_seconds"] is None


def test_memory_sizes_take_a_gb_unit_as_people_write_them():
    args = ("x", "--size", "4096", "--ram", "64")
    bare = plan_json(*args, "--vram", "24")
    for typed in ("24GB", "24 GiB", "24g"):
        assert plan_json(*args, "--vram", typed)["budget_bytes"] == bare["budget_bytes"]
    assert plan_json("x", "--size", "4096", "--vram", "24", "--ram", "64GB") == bare
    assert_usage_error(cli("plan", *args, "--vram", "24MB"),
                       "'24MB' is not a size; give a number like 24 or 24GB")


def test_implausible_memory_and_rates_are_usage_errors():
    """--vram 1e308 overflowed (exit 1), --ram 1e300 kept the planner searching for minutes,
    --gpu 1e-300 printed times hundreds of digits long; a tiny budget read '0.0 GiB'."""
    for args, said in ((("--vram", "1e308"), "--vram must be less than 1,000,000 GiB"),
                       (("--ram", "1e300"), "--ram must be less than 1,000,000 GiB"),
                       (("--disk", "1e300"), "--disk must be less than 1,000,000 GB"),
                       (("--gpu", "1e-300"), "--gpu rate must be a TFLOP/s figure of at least")):
        result = cli("plan", "x", "--size", "1024", *args)
        assert result.exit_code == 2, result.stderr
        assert error_lines(result.stderr)[0].startswith(f"error: {said}"), result.stderr
    tiny = cli("plan", "x", "--size", "1024", "--gpu", "4090", "--vram", "0.001")
    assert tiny.exit_code == 2 and "more than the 0.001 GiB one" in tiny.stderr


def test_a_vram_above_the_named_cards_memory_is_said():
    """The 16k-24gb preset with --gpu 3060 planned a 20.7 GiB peak on a 12 GiB card without a
    word. A budget above the card's memory is planned (a card of that size, at this one's
    speed), and said."""
    args = ("x", "--preset", "16k-24gb", "--gpu", "3060", "--ram", "32", "--disk", "100")
    plan = plan_json(*args)
    assert plan["budget_from"] == "vram" and plan["budget_bytes"] == 23.5 * 1024**3
    said = cli("plan", *args)
    assert "23.5 GiB budget (more than the 3060's 12.0 GiB: from --vram or a preset)" in said.stdout
    assert "warning: the plan's 23.5 GiB budget is more than the 3060's 12.0 GiB" in said.stderr
    # what it says to give works: no flag drops the preset's vram ('drop --vram' did not)
    assert "--vram 11.5 plans the card (or --vram left out, where no preset gives one)" \
        in said.stderr
    card = cli("plan", *args, "--vram", "11.5")
    assert "11.5 GiB budget (--vram), " in card.stdout and "warning" not in card.stderr
    below = cli("plan", "x", "--size", "2048", "--gpu", "4090", "--vram", "8", "--ram", "32")
    assert "8.0 GiB budget (--vram), times" in below.stdout and "warning" not in below.stderr


def test_a_plan_says_the_free_ram_it_took_and_json_gives_the_ram_apart_from_the_disk():
    """Without --ram a plan took 80 % of this machine's RAM as free and said nothing, so two
    machines' plans differed without a word; --json's host_bytes counted the parked maps on
    disk too, with no field for the RAM alone (QA 190)."""
    from hires.dry_run import DRY_RUN_FREE_RAM
    from hires.memory import ram_bytes

    args = ("--size", "16384", "--gpu", "4090")
    taken = DRY_RUN_FREE_RAM * ram_bytes()[0]
    plan = plan_json(*args)
    assert (plan["ram_bytes"], plan["ram_from"]) == (int(taken), "machine")
    assert f", {taken / GIB:.1f} GiB of RAM taken as free (--ram sets it), " in \
        cli("plan", *args).stdout.splitlines()[0]
    given = ("--size", "16384", "--gpu", "3060", "--ram", "16", "--disk", "100")
    plan = plan_json(*given)
    assert (plan["ram_bytes"], plan["ram_from"]) == (16 * GIB, "ram")
    text = cli("plan", *given).stdout
    assert "taken as free" not in text  # --ram's: said by the command line
    last = plan["stages"][-1]
    assert last["disk_bytes"] > 0 and last["ram_bytes"] == last["host_bytes"] - last["disk_bytes"]
    assert f"{last['ram_bytes'] / GIB:.1f} GiB of RAM + " in text.splitlines()[-2]
    assert "taken as free" not in cli("plan", "--size", "2048", "--gpu", "h200").stdout
    # a CPU's plan: its RAM is the budget, not 80 % of the machine's (QA 191)
    cpu = plan_json("--size", "2048", "--device", "cpu")
    # null, not left out: a script's d["ram_from"] holds for every plan (QA 202)
    assert cpu["ram_bytes"] is None and cpu["ram_from"] is None and cpu["budget_from"] == "device"


def test_ram_is_a_cpu_runs_budget(tmp_path):
    """On a CPU the device's memory is the RAM: --ram was ignored, the free RAM planned."""
    from hires.job import Job
    from hires.pipeline import budget_for

    plan = plan_json("x", "--size", "2048", "--device", "cpu", "--ram", "64", "--model", "tiny")
    assert plan["budget_from"] == "ram" and plan["budget_bytes"] == 64 * 1024**3
    few = cli("plan", "x", "--size", "16384", "--device", "cpu", "--ram", "8")
    assert few.exit_code == 2 and "more than the 8.0 GiB one" in few.stderr

    class Cpu:
        device, parts = torch.device("cpu"), ()

    assert budget_for(Job(ram=3), Cpu()) == 3 * 1024**3
    assert budget_for(Job(ram=3, vram=2), Cpu()) == 2 * 1024**3


def test_a_plan_without_a_budget_is_timed_at_a_cards_rate_not_on_the_card():
    """`hires plan --size 16384` (no --gpu, no GPU here) said 'times on h100' of a plan whose
    83 GiB peak an H100 cannot hold."""
    text = cli("plan", "x", "--size", "16384").stdout.splitlines()[0]
    assert "no memory budget" in text and "times at h100's rate, its memory aside" in text
    named = cli("plan", "x", "--size", "16384", "--gpu", "h100").stdout.splitlines()[0]
    assert "times on h100 (" in named


def test_plan_refuses_a_format_that_cannot_hold_the_image_as_gen_does():
    """`hires plan --size 16384 --format webp` planned (exit 0) what gen refuses."""
    assert_usage_error(cli("plan", "--size", "16384", "--format", "webp"),
                       "--format webp: WebP images are at most 16383 px a side")
    assert_usage_error(cli("plan", "--print-size", "A0", "--dpi", "700", "--format", "webp"),
                       "WebP images are at most 16383 px")
    # a preset's 16-bit depth in a JPEG
    assert_usage_error(cli("plan", "--preset", "print-a2", "--format", "jpg"),
                       "--format jpg: JPEG holds 8 bits a channel", "--depth 8")
    # as the message says: plan had no --depth ('no such option')
    assert cli("plan", "--preset", "print-a2", "--format", "jpg", "--depth", "8").exit_code == 0
    assert cli("plan", "--size", "16376", "--format", "webp").exit_code == 0  # a multiple of 8



def test_plan_names_no_format_flag_that_was_not_given(tmp_path):
    """A preset's jpg at 16 bits was refused as "--format jpg: ...", a flag never typed."""
    preset = tmp_path / "jd.toml"
    preset.write_text('format = "jpg"\ndepth = 16\nsize = 64\n')
    assert_usage_error(cli("plan", "--preset", preset), "error: the format jpg: JPEG holds 8 bits")


def test_vae_tile_auto_gives_the_planners_pick_over_a_recorded_tile(tmp_path):
    """A --from record's (or a preset's) vae_tile could only be replaced by another number."""
    out = tmp_path / "t.png"
    made = cli("gen", "x", "--model", "tiny", "--size", "256", "--steps", "1", "--vae-tile",
               "256", "-o", out)
    assert made.exit_code == 0, made.stderr

    def tiles(*args):
        result = cli("plan", "--json", *args)
        assert result.exit_code == 0, result.stderr
        planned = json.loads(result.stdout)
        return planned["job"]["vae_tile"], [s["vae_tile"] for s in planned["stages"]]

    assert tiles("--from", out) == (256, [256])
    # the job's tile is the planner's again, as for a job that never set one
    assert tiles("--from", out, "--vae-tile", "auto") == \
        tiles("--model", "tiny", "--size", "256", "--steps", "1")
    assert tiles("--from", out, "--vae-tile", "auto")[0] is None
    assert_usage_error(cli("plan", "--size", "1024", "--vae-tile", "128"),
                       "--vae-tile must be a multiple of 8 from 256", "or auto")
    assert_usage_error(cli("plan", "--size", "1024", "--vae-tile", "big"),
                       "--vae-tile must be a whole number or auto, got 'big'")


def test_disk_caps_the_exact_modes_scratch_and_0_plans_none():
    """`--vae-stats exact --disk 0` planned 21.9 GB of scratch at 8K on an H100, as `--disk
    100` did (0 read as no cap): 0 is never, and a cap bounds the files; on a CPU too. (A
    4090, where the files are worth their time: an H100 recomputes faster, and writes none.)"""
    plans = {d: plan_json("--size", "8192", "--gpu", "4090", "--vae-stats", "exact",
                          "--disk", d)["stages"] for d in ("0", "5", "100")}
    assert max(s["scratch_bytes"] for s in plans["100"]) > 20e9
    assert all(s["scratch_bytes"] == 0 for s in plans["0"])
    assert 0 < max(s["scratch_bytes"] for s in plans["5"]) <= 5e9
    # What the files do not hold is recomputed: more work, and more time than with them.
    work = {d: sum(s["tflop"] for s in p) for d, p in plans.items()}
    assert work["0"] > work["5"] > work["100"]
    cpu = [plan_json("--size", "2048", "--device", "cpu", "--ram", "64", "--vae-stats", "exact",
                     "--vae-tile", "512", "--disk", d)["stages"] for d in ("0", "100")]
    assert all(s["scratch_bytes"] == 0 for s in cpu[0])
    assert max(s["scratch_bytes"] for s in cpu[1]) > 0


def test_a_forced_vae_tile_that_does_not_fit_is_named_not_the_size(small):
    """`--vae-tile 8192` on a 4070 at 8K said "2624x2624 fits" where the job plans at 9.9 GiB
    with the planner's tile: the refusal names the tile, the largest that fits, and auto."""
    card = ("--gpu", "4070", "--vae-tile", "8192")
    largest = []
    for result in (cli("plan", "x", "--size", "8192", *card),
                   cli("up", str(small), "--scale", "64", *card, "--dry-run")):
        assert result.exit_code == 2
        (line,) = error_lines(result.stderr)
        assert "--vae-tile 8192 does not fit" in line and "--vae-tile auto" in line
        assert "x2624 fits" not in line and "fits;" not in line
        largest.append(int(line.split("; --vae-tile ")[-1].split()[0]))
        assert 256 <= largest[-1] < 8192 and largest[-1] % 8 == 0
    plan = ("plan", "x", "--size", "8192", "--gpu", "4070", "--vae-tile")
    assert cli(*plan, str(largest[0])).exit_code == 0
    assert cli(*plan, str(largest[0] + 8)).exit_code == 2
    assert cli("plan", "x", "--size", "8192", "--gpu", "4070").exit_code == 0
    # Where no tile would do, the size is still what is blamed.
    too_big = cli("plan", "x", "--size", "16384", "--vram", "6", "--ram", "64", "--vae-tile",
                  "2048")
    assert too_big.exit_code == 2
    (line,) = error_lines(too_big.stderr)
    assert "--vae-tile" not in line and "fits" in line


def test_a_previews_forced_vae_tile_that_does_not_fit_is_named(tmp_path):
    """With --preview only the first stage runs, and is fitted, but the largest tile that fits
    was looked for over every stage: where a later stage fits no tile, the refusal blamed the
    card ("try a larger --vram") for a preview that plans with a smaller tile."""
    photo = tmp_path / "in.png"
    Image.new("RGB", (2048, 2048), (90, 120, 200)).save(photo)
    card = ("up", str(photo), "--scale", "8", "--preview", "--vram", "6", "--gpu", "4090",
            "--dry-run", "-o", str(tmp_path / "out.png"))
    forced = cli(*card, "--vae-tile", "2048")
    assert forced.exit_code == 2
    (line,) = error_lines(forced.stderr)
    assert "--vae-tile 2048 does not fit: stage 0" in line and "--vae-tile auto" in line
    largest = int(line.split("; --vae-tile ")[1].split()[0])
    assert cli(*card, "--vae-tile", str(largest)).exit_code == 0
    assert cli(*card, "--vae-tile", str(largest + 8)).exit_code == 2
    assert cli(*card).exit_code == 0
    assert cli(*card[:4], *card[5:]).exit_code == 2  # the whole job fits no tile on 6 GiB


def test_the_plans_text_names_each_stages_vae_tile():
    """Only --json had `vae_tile`: each stage line that runs the VAE now says its tile, as
    --json does; a base stage whose image the next stage decodes says none."""
    for args in (("--size", "8192", "--gpu", "4070"), ("--size", "4096", "--vae-tile", "1024")):
        text = cli("plan", "x", *args)
        assert text.exit_code == 0, text.stderr
        lines = [x for x in (text.stdout + text.stderr).splitlines() if x.startswith("stage ")]
        stages = plan_json("x", *args)["stages"]
        assert len(lines) == len(stages) > 1
        assert "VAE tiles" not in lines[0]
        for line, s in zip(lines[1:], stages[1:], strict=True):
            assert f", VAE tiles {s['vae_tile']} px," in line
    assert all(s["vae_tile"] == 1024 for s in stages[1:])


def test_a_gpu_name_with_spaces_around_is_the_card():
    """`--gpu "4090 "` (a script's variable) said "the 4090 's 24.0 GiB" in every line."""
    result = cli("plan", "--size", "4096", "--gpu", " 4090 ", "--vram", "30")
    assert result.exit_code == 0, result.stderr
    assert "4090 '" not in result.stdout + result.stderr
    assert "more than the 4090's 24.0 GiB" in result.stdout


def _fits_hint(result):
    """The "WxH fits" of a refusal, as (width, height), or None."""
    import re

    assert result.exit_code == 2, result.stderr
    found = re.search(r"; (\d+)x(\d+) fits", result.stderr)
    return (int(found[1]), int(found[2])) if found else None


def test_the_size_that_fits_keeps_the_aspect_and_is_the_largest(tmp_path):
    """The hint was floored to 64 px a side, 7744x4352 for 16:9 (1.779): --size with --aspect
    makes the largest size on the 8 px grid, and the next one up does not fit."""
    from hires.job import size_from

    args = ("--ram", "20", "--vae-dtype", "fp32", "--dry-run", "-o", tmp_path / "y.png")
    w, h = _fits_hint(cli("gen", "x", "--size", "8192", "--aspect", "16:9", *args))
    assert (w, h) == size_from(w, "16:9", None, None) and w % 8 == 0
    assert cli("gen", "x", "--size", w, "--aspect", "16:9", *args).exit_code == 0
    assert cli("gen", "x", "--size", w + 8, "--aspect", "16:9", *args).exit_code == 2
    # 3:2 at 16384 is 16384x10920, its aspect only to 8 px: the hint holds however it is
    # given (12344x8224 was said, and --size 12344 --aspect 3:2 makes 12344x8232)
    card = ("--gpu", "4090", "--vram", "5", "--ram", "64", "--disk", "100")
    w, h = _fits_hint(cli("plan", "--size", "16384", "--aspect", "3:2", *card))
    assert cli("plan", "--size", w, "--aspect", "3:2", *card).exit_code == 0
    assert cli("plan", "--width", w, "--height", h, *card).exit_code == 0


def test_an_upscale_is_told_a_size_of_its_input_s_shape_and_never_below_it(tmp_path):
    """For a 600x400 photo the hint was 512x896 (a size `hires up` refuses, and stretched),
    or 832x576 at 1.44:1: now what --size makes from the photo, larger than it, or none."""
    from hires.sizes import target_size

    photo, square = tmp_path / "in.png", tmp_path / "square.png"
    Image.new("RGB", (600, 400)).save(photo)
    args = ("--model", "tiny", "--vram", "1", "--dry-run", "-o", tmp_path / "y.png")
    w, h = _fits_hint(cli("up", photo, "--scale", "20", *args))
    assert (w, h) == target_size((600, 400), size=w) and w > 600 and h > 400
    assert cli("up", photo, "--size", w, *args).exit_code == 0
    assert _fits_hint(cli("up", photo, "--size", w + 8, *args)) == (w, h)
    # Nothing as large as this input fits: no size is offered (704x640 was, for 1000x960).
    Image.new("RGB", (1000, 960)).save(square)
    assert _fits_hint(cli("up", square, "--scale", "2", *args)) is None


def test_a_dry_run_s_json_says_the_format_the_run_records(tmp_path):
    """A preset's format gives way to -o's suffix: the run records png, but the dry run's
    JSON said the preset's tiff."""
    preset = tmp_path / "mine.toml"
    preset.write_text('format = "tiff"\nsize = 64\nsteps = 1\nmodel = "tiny"\n')
    args = ("gen", "a fox", "--preset", preset, "--seed", "1", "-o", tmp_path / "a.png")
    planned = json.loads(cli(*args, "--dry-run", "--json").stdout)
    assert planned["job"]["format"] == planned["images"][0]["format"] == "png"
    assert cli(*args, "-q").exit_code == 0
    recorded = json.loads(cli("info", tmp_path / "a.png", "--json").stdout)
    assert recorded["job"]["format"] == "png"


def test_a_preset_s_device_is_named_as_the_preset_s_not_as_a_flag(tmp_path, monkeypatch):
    """A preset's device = "cuda" on a machine without one was "--device cuda: ...", a flag
    never typed; the flag itself is still named so."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without one
    preset = tmp_path / "cuda.toml"
    preset.write_text('device = "cuda"\nsize = 64\n')
    out = ("-o", tmp_path / "c.png")
    assert_usage_error(cli("gen", "x", "--preset", preset, "--dry-run", *out),
                       "error: the device cuda (a preset's or a record's): torch sees no CUDA")
    assert_usage_error(cli("gen", "x", "--device", "cuda", "--dry-run", *out),
                       "error: --device cuda: torch sees no CUDA")


def test_a_size_a_little_past_a_stage_is_told_what_the_stages_size_takes():
    """`--size 16392` runs a whole 16K stage and then one more for 8 px (~464 s against
    ~231 s), with two stages both labelled x16 and no word (QA 190)."""
    past = cli("plan", "--size", "16392", "--gpu", "h100")
    assert past.exit_code == 0, past.stderr
    (said,) = [line for line in past.stderr.splitlines() if "runs a stage of its own" in line]
    assert said.startswith("16392x16392 is 0.049 % larger a side than stage 4's 16384x16384")
    assert "(--size 16384) takes ~4 min instead of ~8 min" in said
    assert said in plan_json("--size", "16392", "--gpu", "h100")["hints"]
    wide = cli("plan", "--width", "8200", "--height", "4616", "--gpu", "h100")
    assert "runs a stage of its own" not in wide.stderr  # 8200 is no stage's: 5376 x 1.5
    exact = cli("plan", "--size", "16384", "--gpu", "h100")
    assert "runs a stage of its own" not in exact.stderr


def test_a_named_card_and_a_cpu_or_mps_device_are_refused_together():
    """`--device mps --gpu 4090` planned without the card's memory ("its memory aside"), and
    `--device cpu --gpu 4090` said the free RAM's 21.1 GiB was "the 4090's 24.0 GiB less 0.5"
    (QA 190)."""
    for device in ("cpu", "mps"):
        assert_usage_error(cli("plan", "--size", "4096", "--device", device, "--gpu", "4090"),
                           f"--gpu 4090 plans that CUDA card, and --device {device} a run on")
    timed = cli("plan", "--size", "4096", "--device", "cpu", "--gpu", "0.5")  # a rate: times it
    assert timed.exit_code == 0 and "(the free RAM), times at 0.5 TFLOP/s" in timed.stdout
