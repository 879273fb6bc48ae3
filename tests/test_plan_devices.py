"""A plan for the CPU or a Mac's GPU is made as that run goes: in the dtype it takes, in the
memory its flags allow, and untimed where the device's rate is not known."""

import json

from helpers_cli import cli, error_lines


def plan(*args: str) -> dict:
    result = cli("plan", "--size", "1024", *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_a_cpu_plan_counts_the_dtype_the_run_takes():
    """Every CPU plan counted fp32 weights: --dtype bf16, which the run takes, planned 14 GiB
    for SDXL where it needs about half, and a --ram that fits it was refused (QA 202)."""
    fp32, bf16 = plan("--device", "cpu", "--dtype", "fp32"), plan("--device", "cpu",
                                                                  "--dtype", "bf16")
    assert plan("--device", "cpu")["peak_bytes"] == fp32["peak_bytes"]  # auto: fp32 there
    assert bf16["peak_bytes"] < 0.7 * fp32["peak_bytes"]
    ram = f"{bf16['peak_bytes'] * 1.3 / 2**30:.1f}"
    assert cli("plan", "--device", "cpu", "--dtype", "bf16", "--ram", ram).exit_code == 0
    assert cli("plan", "--device", "cpu", "--dtype", "fp32", "--ram", ram).exit_code == 2


def test_a_macs_gpu_is_not_timed_at_a_cuda_cards_rate():
    """--device mps was timed at an H100's rate, faster than the CUDA plan, while --gpu h100
    with it is refused (QA 202)."""
    mps = plan("--device", "mps")
    assert mps["gpu"] == "mps" and mps["seconds"] is None and mps["tflops"] is None
    text = cli("plan", "--device", "mps")
    assert "no times: a Mac GPU's rate is not known" in text.stdout.splitlines()[0]
    timed = plan("--device", "mps", "--gpu", "5")  # a measured figure still times it
    assert timed["seconds"] > 0 and timed["tflops"] == 5
    # its fp16 weights, as the run takes them there
    assert mps["peak_bytes"] < 0.8 * plan("--device", "cpu")["peak_bytes"]


def test_vram_and_ram_on_a_cpu_the_smaller_holds():
    """On a CPU both cap its RAM: --ram was dropped without a word where --vram was given."""
    for vram, ram, flag in (("8", "64", "vram"), ("64", "8", "ram")):
        result = cli("plan", "--size", "1024", "--device", "cpu", "--vram", vram, "--ram", ram)
        assert result.exit_code == 2
        (line,) = error_lines(result.stderr)
        assert "more than the 8.0 GiB one" in line and line.endswith(f"try a larger --{flag}")
    both = plan("--device", "cpu", "--vram", "40", "--ram", "30")
    assert both["budget_bytes"] == 30 * 2**30 and both["budget_from"] == "ram"


def test_a_memory_size_given_as_gpu_names_vram():
    """--gpu 12gb said "unknown GPU '12gb'", and a bare 12, a TFLOP/s figure, was said as a
    card's: "times at 12's rate" (QA 202)."""
    for given in ("12gb", "12 GiB", "12G"):
        result = cli("plan", "--size", "4096", "--gpu", given)
        assert result.exit_code == 2
        (line,) = error_lines(result.stderr)
        assert "is a memory size: give it as --vram 12," in line, line
    header = cli("plan", "--size", "4096", "--gpu", "12").stdout.splitlines()[0]
    assert "times at 12 TFLOP/s (--gpu 12;" in header and "12's" not in header
    card = cli("plan", "--size", "4096", "--gpu", "4090").stdout.splitlines()[0]
    assert "times on 4090 (" in card


def test_a_cpu_dry_run_warns_of_its_settings_as_the_run_does(tmp_path):
    """The run warns that --offload does nothing on the CPU and that fp16 is slow there; a
    dry run and `hires plan --device cpu` said neither (QA 202)."""
    result = cli("plan", "--size", "1024", "--device", "cpu", "--offload", "sequential")
    assert result.exit_code == 0
    assert "warning: --offload sequential does nothing on the CPU" in result.stderr
    dry = cli("gen", "x", "--model", "tiny", "--size", "256", "--device", "cpu", "--dtype",
              "fp16", "--offload", "model", "-o", tmp_path / "x.png", "--dry-run")
    assert dry.exit_code == 0
    assert "warning: --dtype fp16 on the CPU is about 4x slower than fp32" in dry.stderr
    assert "warning: --offload model does nothing on the CPU" in dry.stderr
    gpu = cli("plan", "--size", "1024", "--gpu", "h100", "--offload", "sequential")
    assert "does nothing" not in gpu.stderr  # a GPU's offload does what it says


def test_bf16_on_a_card_without_it_is_warned_of(tmp_path):
    """--dtype bf16 planned on a T4 or V100 was timed as fp16 and said nothing; torch emulates
    bf16 there (QA 202). A preset's is named as the preset's."""
    for gpu in ("t4", "v100"):
        said = cli("plan", "--size", "1024", "--gpu", gpu, "--dtype", "bf16").stderr
        assert f"warning: the {gpu} has no native bf16: --dtype bf16 runs the UNet emulated" \
            in said
    assert "native bf16" not in cli("plan", "--size", "1024", "--gpu", "a100", "--dtype",
                                    "bf16").stderr
    assert "no native bf16: --dtype" not in cli("plan", "--size", "1024", "--gpu", "t4").stderr
    preset = tmp_path / "b.toml"
    preset.write_text('dtype = "bf16"\n')
    said = cli("plan", "--size", "1024", "--gpu", "t4", "--preset", str(preset)).stderr
    assert f"no native bf16: dtype = \"bf16\" in preset 'b' ({preset}) runs the UNet" in said


def test_a_run_in_bf16_on_a_gpu_without_it_warns(monkeypatch, capsys):
    """The run's side of it: a CUDA UNet in bf16 where torch has no native bf16."""
    from types import SimpleNamespace

    import torch

    from hires.cli_runs import check_steps_and_notes
    from hires.job import Job

    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: including_emulation)
    parts = SimpleNamespace(device=torch.device("cuda"), dtype=torch.bfloat16,
                            vae_dtype=torch.bfloat16,
                            pipe=SimpleNamespace(scheduler=SimpleNamespace(config={})))
    check_steps_and_notes(Job(prompt="x", dtype="bf16"), parts)
    assert "this GPU has no native bf16: --dtype bf16 runs the UNet emulated" in \
        capsys.readouterr().err
    check_steps_and_notes(Job(prompt="x", dtype="fp16"),
                          SimpleNamespace(**{**vars(parts), "dtype": torch.float16}))
    assert "native bf16" not in capsys.readouterr().err


def test_the_ram_warning_judges_the_budget_that_holds(tmp_path):
    """Given --vram 100 --ram 20 on a CPU the budget is 20 GiB, but the warning said "a vram
    of 100 GiB is the CPU run's memory budget ... drop --vram" (QA 203)."""
    from hires.memory import ram_bytes

    huge = f"{ram_bytes()[0] / 2**30 * 4:.0f}"
    args = ("gen", "x", "--model", "tiny", "--size", "256", "--device", "cpu", "-o",
            tmp_path / "x.png", "--dry-run")
    for vram, ram in ((huge, "8"), ("8", huge)):
        result = cli(*args, "--vram", vram, "--ram", ram)
        assert result.exit_code == 0 and "memory budget" not in result.stderr, result.stderr
    both = cli(*args, "--vram", huge, "--ram", str(int(huge) + 1))
    assert f"warning: a vram of {huge} GiB is the CPU run's memory budget" in both.stderr
    assert "(drop --vram and --ram, or the preset's or job's vram and ram," in both.stderr
    header = cli(*args[:-1], "--vram", "8", "--dry-run").stdout.splitlines()[0]
    assert "8.0 GiB budget (--vram)" in header
    preset = tmp_path / "p.toml"  # a preset's is said as the preset's, not a flag never typed
    preset.write_text("vram = 8\n")
    header = cli(*args[:-1], "--preset", str(preset), "--dry-run").stdout.splitlines()[0]
    assert f"8.0 GiB budget (vram in preset 'p' ({preset}))" in header, header
    jobs = tmp_path / "j.toml"  # and a batch's dry run warns as its run does (QA 205)
    jobs.write_text(f'[defaults]\ndevice = "cpu"\nmodel = "tiny"\nsize = 256\nvram = {huge}\n'
                    '[[job]]\nprompt = "a"\n')
    batch = cli("batch", str(jobs), "-o", str(tmp_path / "out"), "--dry-run")
    assert f"warning: job 0: a vram of {huge} GiB is the CPU run's memory budget" in batch.stderr
    # batch has no --vram: its keys are named (QA 207)
    assert "(drop the preset's or job's vram, to plan" in batch.stderr and "--vram" not in \
        batch.stderr


def test_a_batch_dry_run_warns_of_a_cpu_jobs_settings(tmp_path):
    """The batch run warns of them by the key that gave them; its dry run said nothing, and
    each job's `warnings` was empty (QA 203). A [defaults] key's is said once."""
    jobs = tmp_path / "t.toml"
    jobs.write_text('[defaults]\ndevice = "cpu"\nmodel = "tiny"\nsize = 256\n'
                    'offload = "sequential"\n[[job]]\nprompt = "a"\ndtype = "fp16"\n'
                    '[[job]]\nprompt = "b"\n')
    text = cli("batch", str(jobs), "--dry-run", "-o", str(tmp_path / "out"))
    assert text.exit_code == 0, text.stderr
    assert text.stderr.count('warning: offload = "sequential" in t.toml [defaults] does '
                             "nothing on the CPU") == 1
    assert 'warning: dtype = "fp16" in t.toml job 0 is about 4x slower' in text.stderr
    rows = [json.loads(line) for line in cli("batch", str(jobs), "--dry-run", "--json", "-o",
                                            str(tmp_path / "out")).stdout.splitlines()]
    assert [len(row["warnings"]) for row in rows] == [2, 1]


def test_a_small_models_plan_counts_its_dtype_too(tmp_path):
    """The tiny model (and a small local one) was planned with fp32 weights whatever --dtype
    said: its bf16 run's estimated peak differed from its dry run's (QA 203)."""
    peaks = {}
    for dtype in ("auto", "bf16", "fp32"):
        result = cli("gen", "a", "--model", "tiny", "--size", "1024", "--device", "cpu",
                     "--dtype", dtype, "-o", tmp_path / "a.png", "--dry-run", "--json")
        peaks[dtype] = json.loads(result.stdout.splitlines()[0])["peak_bytes"]
    assert peaks["auto"] == peaks["fp32"] > peaks["bf16"]


def test_a_batchs_ram_warning_names_its_jobs(tmp_path):
    """A batch's RAM warning named no job: in a file of many, which had the budget?"""
    from hires.cli_runs import job_numbers
    from hires.memory import ram_bytes

    assert job_numbers([3]) == "job 3"
    assert job_numbers([5, 1, 2, 3, 7]) == "jobs 1-3, 5 and 7"
    huge = f"{ram_bytes()[0] / 2**30 * 4:.0f}"
    jobs = tmp_path / "j.toml"
    jobs.write_text('[defaults]\ndevice = "cpu"\nmodel = "tiny"\nsize = 256\nsteps = 1\n'
                    f'[[job]]\nprompt = "a"\nvram = {huge}\n[[job]]\nprompt = "b"\n'
                    f'[[job]]\nprompt = "c"\nvram = {huge}\n')
    said = f"warning: jobs 0 and 2: a vram of {huge} GiB is the CPU run's memory budget"
    for dry in (["--dry-run"], []):
        result = cli("batch", str(jobs), "-o", str(tmp_path / "out"), *dry)
        assert result.exit_code == 0, result.stderr
        assert said in result.stderr, result.stderr
