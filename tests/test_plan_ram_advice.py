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
