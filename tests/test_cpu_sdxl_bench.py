"""benchmarks/cpu_sdxl.py --smoke: the script that checks a whole CPU job against its plan."""

import json
import subprocess
import sys

from helpers_bench import BENCHMARKS


def test_the_cpu_job_benchmark_runs_and_writes_its_json(tmp_path):
    out = tmp_path / "cpu.json"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "cpu_sdxl.py"), "--smoke", "--out",
                           str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert [s["width"] for s in report["stages"]] == [256, 512]
    assert report["peak_rss_gib"] >= report["rss_before_run_gib"] > 0
    assert 0 < max(s["planned_peak_gib"] for s in report["stages"]) < report["budget_gib"]
    assert "peak resident" in done.stdout
