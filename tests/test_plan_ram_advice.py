"""A plan short of RAM says how much free RAM would do, and that figure plans."""

import re

from helpers_cli import cli, error_lines

# 8K on a 3060 (its last stage needs 4.9 GiB for parked maps): the same refusals as at 16K
# (seen there, below); each refusal's search for a size that fits costs a fraction of 16K's.
CARD = ("plan", "x", "--size", "8192", "--gpu", "3060", "--disk", "0")


def test_the_ram_a_refusal_names_is_enough_and_less_is_not():
    """It said "try a larger --ram" where 26.2 GiB was needed (16K on a 3060): --ram 26.2 to
    31 were all refused too (hires keeps 10 % + 2 GiB of the free RAM back)."""
    short = cli(*CARD, "--ram", "4")
    assert short.exit_code == 2
    (line,) = error_lines(short.stderr)
    enough = re.search(r"\(([\d.]+) GiB of free RAM would do: hires keeps 10 % \+ 2 GiB", line)
    assert enough, line
    ram = float(enough.group(1))
    assert cli(*CARD, "--ram", str(ram)).exit_code == 0
    assert cli(*CARD, "--ram", f"{ram - 0.2:.1f}").exit_code == 2


def test_the_amounts_are_told_apart():
    """"6.5 GiB ... and 6.5 GiB of it is free" said nothing of why it did not fit (16K on a
    4090, --ram 9.4: 6.51 and 6.46). Here 4.92 GiB needed and 4.89 free: 4.9 and 4.9 to one
    decimal."""
    short = cli(*CARD, "--ram", "7.65")
    (line,) = error_lines(short.stderr)
    need, have = re.search(r"only with ([\d.]+) GiB .* and ([\d.]+) GiB of it is free",
                           line).groups()
    assert float(need) > float(have)


def test_a_few_parked_maps_on_disk_are_not_said_as_0_0_gb():
    """With a disk, 8K on a 3060 at --ram 7.65 parks 0.04 GB on it: the plan said "+ 0.0 GB
    of parked maps on disk" (and a refusal "let the 0.0 GB ... wait on a disk")."""
    plan = cli("plan", "x", "--size", "8192", "--gpu", "3060", "--disk", "100", "--ram", "7.65")
    assert plan.exit_code == 0, plan.stderr
    amounts = re.findall(r"RAM \+ ([\d.]+) GB of parked maps on disk", plan.stdout)
    assert amounts and all(float(a) > 0 for a in amounts), plan.stdout


def test_a_refusal_names_the_ram_the_whole_job_needs():
    """The first stage short of RAM said only its own need: 9.5 GiB for 16K at --vram 8, and
    --ram 9.5 was refused again at the 16K stage (31.4 GiB). Followed, the whole job's plans."""
    job = ("plan", "x", "--size", "16384", "--vram", "8", "--gpu", "h100", "--disk", "0")
    short = cli(*job, "--ram", "8")
    (line,) = error_lines(short.stderr)
    assert "(9.5 GiB of free RAM would do" in line
    whole = re.search(r"and the whole job ([\d.]+) GiB of free RAM \(a later stage needs "
                      r"more\)", line)
    assert whole, line
    assert cli(*job, "--ram", "9.5").exit_code == 2
    assert cli(*job, "--ram", whole.group(1)).exit_code == 0


def test_a_refusal_for_ram_says_the_gpu_budget_that_ram_then_needs():
    """With the RAM it named, the job met a GPU budget too small, never said: --ram 9.5 at
    --vram 3.5 was refused again for the GPU's memory."""
    job = ("plan", "x", "--size", "6144", "--gpu", "h100", "--disk", "20")
    short = cli(*job, "--vram", "3.5", "--ram", "6")
    (line,) = error_lines(short.stderr)
    ram = re.search(r"\(([\d.]+) GiB of free RAM would do", line).group(1)
    vram = re.search(r"with that RAM, it needs a ([\d.]+) GiB GPU budget too, more than the "
                     r"3\.5 GiB one", line)
    assert vram, line
    assert cli(*job, "--vram", "3.5", "--ram", ram).exit_code == 2
    assert cli(*job, "--vram", vram.group(1), "--ram", ram).exit_code == 0


def test_a_little_ram_for_vae_outputs_is_not_said_as_0_gib():
    """728 px at --vram 8 --ram 8 keeps 0.27 GiB of VAE outputs in RAM: the header said "+0 GiB
    of RAM for VAE outputs" beside a stage's "VAE outputs in RAM"."""
    plan = cli("plan", "x", "--size", "728", "--vram", "8", "--ram", "8", "--gpu", "h100",
               "--disk", "100")
    assert plan.exit_code == 0, plan.stderr
    assert "+0.3 GiB of RAM for VAE outputs" in plan.stdout, plan.stdout


def test_the_ram_and_gpu_budget_a_refusal_names_plan_together():
    """The GPU budget the job needed with the RAM named lets a stage park more: --vram 4.6
    --ram 10.4 was refused again (15.0 GiB). Both figures are planned again until they hold."""
    job = ("plan", "x", "--size", "8192", "--gpu", "h100", "--disk", "0")
    line = error_lines(cli(*job, "--vram", "4", "--ram", "8").stderr)[0]
    ram = re.search(r"the whole job ([\d.]+) GiB of free RAM", line)
    vram = re.search(r"it needs a ([\d.]+) GiB GPU budget too", line)
    assert ram and vram, line
    assert cli(*job, "--vram", vram.group(1), "--ram", ram.group(1)).exit_code == 0


def test_a_gpu_refusal_names_the_ram_its_whole_job_budget_then_needs():
    """--vram 3 said a 3.1 GiB budget, then 3.2, 4.0, 4.6, then a refusal for RAM: four goes.
    The first names the whole job's budget and the RAM that budget's plan needs."""
    job = ("plan", "x", "--size", "8192", "--gpu", "h100", "--disk", "0")
    line = error_lines(cli(*job, "--vram", "3", "--ram", "12").stderr)[0]
    vram = re.search(r"and the whole job a ([\d.]+) GiB one", line)
    ram = re.search(r"with that budget, it needs ([\d.]+) GiB of free RAM too", line)
    assert vram and ram, line
    assert cli(*job, "--vram", vram.group(1), "--ram", "12").exit_code == 2
    assert cli(*job, "--vram", vram.group(1), "--ram", ram.group(1)).exit_code == 0
