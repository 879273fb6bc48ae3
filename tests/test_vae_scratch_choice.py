"""Exact mode's scratch files are written only where they are faster than recomputing."""

import json

from helpers_cli import cli

from hires.job import Job


def _plan(*args: str) -> dict:
    result = cli("plan", "x", "--vae-stats", "exact", "--json", *args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_more_scratch_room_never_plans_a_slower_exact_job():
    """At 8K on an H100 the files' traffic (21.9 GB, read back many times) planned 476 s
    where recomputing without them (--disk 0) planned 184 s: the plan takes the faster."""
    for gpu, size in (("h100", "8192"), ("h100", "4096"), ("4090", "8192"), ("a100", "8192")):
        roomy = _plan("--size", size, "--gpu", gpu, "--disk", "200")
        none = _plan("--size", size, "--gpu", gpu, "--disk", "0")
        assert roomy["seconds"] <= none["seconds"] * 1.001, (gpu, size)
    h100 = _plan("--size", "8192", "--gpu", "h100", "--disk", "200")["stages"]
    assert all(s["scratch_bytes"] == 0 for s in h100)
    slow = _plan("--size", "8192", "--gpu", "4090", "--disk", "200")["stages"]
    assert max(s["scratch_bytes"] for s in slow) > 20e9  # there the files pay


def test_the_hint_says_why_exact_is_slower_without_files():
    """The hint said "keeps the tiles' outputs in scratch files" of a plan that writes none."""
    result = cli("plan", "x", "--size", "8192", "--gpu", "h100", "--vae-stats", "exact",
                 "--disk", "200")
    assert result.exit_code == 0, result.stderr
    (hint,) = [ln for ln in result.output.splitlines() if ln.startswith("--vae-stats exact")]
    assert "runs each tile again for every statistics pass" in hint
    assert "keeps the tiles' outputs in scratch files" not in hint


def test_the_hint_says_no_room_where_there_is_none():
    """With --disk 0 on a 4090 (where files pay) it said recomputing was "here faster"."""
    result = cli("plan", "x", "--size", "16384", "--gpu", "4090", "--vae-stats", "exact",
                 "--disk", "0")
    assert result.exit_code == 0, result.stderr
    (hint,) = [ln for ln in result.output.splitlines() if ln.startswith("--vae-stats exact")]
    assert hint.endswith("there is no scratch room for its files (--disk, TMPDIR)")


def test_a_run_writes_no_scratch_where_its_plan_recomputes(monkeypatch, tiny):
    """The run follows the plan: a stage priced without files gets no room for them (the
    same pixels), where before it wrote them all the same."""
    from dataclasses import replace

    from test_vae_levers import _memos

    from hires.pipeline import generate, plan_for

    made = _memos(monkeypatch)
    job = Job(prompt="a cat", width=512, height=512, steps=2, seed=4, vae_tile=256,
              vae_stats="exact")
    plan = plan_for(job, tiny)
    assert all(s.cost.vae_files for s in plan.stages)  # the CPU: files pay
    files = generate(job, components=tiny, plan=plan)
    assert sum(m.written for m in made) > 0
    del made[:]
    recompute = replace(plan, stages=tuple(
        replace(s, cost=replace(s.cost, vae_files=False)) for s in plan.stages))
    again = generate(job, components=tiny, plan=recompute)
    assert made and sum(m.written for m in made) == 0
    assert list(again.image.getdata()) == list(files.image.getdata())
