"""A job or image that a stop (Ctrl-C, SIGTERM) ends has its line, with --json and in a
batch's manifest, naming the checkpoint the same command goes on from: a script reading
stdout or the manifest saw only the finished ones (found by QA)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers_cli import cli, failing_once, json_lines, write

from hires.cli_output import Terminated


def jobs_file(path: Path, n: int) -> Path:
    lines = [json.dumps({"prompt": f"job {i}", "model": "tiny", "width": 512, "height": 512,
                         "steps": 2, "seed": i}) for i in range(n)]
    return write(path, "\n".join(lines) + "\n")


@pytest.mark.parametrize("stop, word, code", [(KeyboardInterrupt, "interrupted", 130),
                                              (Terminated, "terminated", 143)])
def test_a_batch_job_stopped_has_its_line_and_manifest_entry(tmp_path, asked, monkeypatch,
                                                             stop, word, code):
    jobs, out = jobs_file(tmp_path / "jobs.jsonl", 3), tmp_path / "out"
    failing_once(monkeypatch, at=1, after=1, error=stop)  # job 1's second stage
    result = cli("batch", jobs, "-o", out, "--json")
    assert result.exit_code == code, result.stderr
    lines = json_lines(result.stdout)
    assert [(line["index"], line["status"]) for line in lines] == [(0, "done"),
                                                                   (1, "interrupted")]
    stopped = lines[1]
    kept = Path(stopped["path"] + ".resume.safetensors")
    assert stopped["error"] == word and stopped["checkpoint"] == str(kept) and kept.is_file()
    assert (stopped["seed"], stopped["width"], stopped["prompt"]) == (1, 512, "job 1")
    manifest = json_lines((out / "manifest.jsonl").read_text())
    assert [m["status"] for m in manifest] == ["done", "interrupted"]
    assert manifest[1]["checkpoint"] == str(kept)
    assert "batch stopped after 1 of 3 jobs: 1 done" in result.stderr
    # the same command goes on: job 0 made, job 1 from its checkpoint, job 2
    again = cli("batch", jobs, "-o", out, "--json")
    assert again.exit_code == 0, again.stderr
    assert [line["status"] for line in json_lines(again.stdout)] == ["skipped", "done", "done"]
    assert json_lines(again.stdout)[1]["resumed_after_stage"] == 0 and not kept.exists()


def test_gen_n_stopped_has_the_stopped_images_line(tmp_path, asked, monkeypatch):
    failing_once(monkeypatch, at=1, after=1, error=KeyboardInterrupt)  # image 2's stage 1
    result = cli("gen", "a lighthouse", "--model", "tiny", "--size", "512", "--steps", "2",
                 "--n", "3", "--seed", "7", "-o", tmp_path / "{seed}.png", "--json")
    assert result.exit_code == 130
    lines = json_lines(result.stdout)
    assert [line.get("status") for line in lines] == ["done", "interrupted"]
    assert lines[1]["seed"] == 8 and lines[1]["error"] == "interrupted"
    assert lines[1]["checkpoint"] == str(tmp_path / "8.png.resume.safetensors")
    assert Path(lines[1]["checkpoint"]).is_file()


def test_gen_n_stopped_while_the_model_loads_says_its_first_image(tmp_path, asked,
                                                                  monkeypatch):
    """As a batch's first job, whose load is its own: gen said nothing on stdout (QA 186)."""
    import hires.pipeline

    def load(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hires.pipeline, "load", load)
    result = cli("gen", "a lighthouse", "--model", "tiny", "--size", "256", "--n", "2",
                 "--seed", "3", "-o", tmp_path / "{seed}.png", "--json")
    assert result.exit_code == 130
    (line,) = json_lines(result.stdout)
    assert (line["status"], line["seed"], line["path"]) == ("interrupted", 3,
                                                           str(tmp_path / "3.png"))
    assert "checkpoint" not in line
