"""hires.record: a result saved from Python carries what the CLI records (info, --from)."""

import json
import os

import pytest
from PIL import Image

from hires.batch import settings_hash
from hires.job import Job
from hires.output import OutputExists, OutputUsage, job_values_from_image, read_metadata
from hires.pipeline import Result, StageReport
from tests.helpers_cli import cli

JOB = Job(prompt="a lighthouse", width=128, height=96, seed=77, steps=4, model="tiny",
          linfusion="none")


def result(stage_images: bool = False) -> Result:
    images = [Image.new("RGB", (64, 48), "navy"), Image.new("RGB", (128, 96), "teal")]
    stages = [StageReport(i, im.width, im.height, s, 4, 8, 0.5, None)
              for i, (im, s) in enumerate(zip(images, (1.0, 0.3)))]
    return Result(images[-1], JOB, None, stages, 1.25, None,  # type: ignore[arg-type]
                  stage_images=images if stage_images else [], linfusion=None)


def test_a_saved_result_records_its_job_for_info_and_from(tmp_path):
    path = tmp_path / "out" / "light.png"  # the folder is made
    record = result().save(path)
    assert record["path"] == str(path) and record["seed"] == 77
    assert record["settings"] == settings_hash(JOB)
    assert [s["strength"] for s in record["stages"]] == [1.0, 0.3]
    saved = read_metadata(path)["hires"]
    assert saved["result"] == record and saved["job"]["prompt"] == "a lighthouse"
    assert job_values_from_image(path)["seed"] == 77  # what `hires gen --from` runs again
    shown = cli("info", str(path))
    assert shown.exit_code == 0 and "prompt 'a lighthouse'" in shown.stdout


def test_info_shows_several_images_and_goes_on_past_a_bad_one(tmp_path):
    paths = [tmp_path / "a.png", tmp_path / "b.jpg"]
    for path in paths:
        result().save(path)
    (tmp_path / "plain.png").write_bytes(b"not an image")
    shown = cli("info", *paths, tmp_path / "plain.png", tmp_path / "missing.png")
    assert shown.exit_code == 2  # the first failure's code, after every image was tried
    assert shown.stdout.count("prompt 'a lighthouse'") == 2
    assert [line for line in shown.stdout.splitlines() if line.startswith("file ")] == [
        f"file {p}" for p in (*paths, tmp_path / "plain.png", tmp_path / "missing.png")]
    assert "cannot read" in shown.stderr and "no such image" in shown.stderr
    # --json: one object per image, each naming its file, for scripts to join on.
    objects = [json.loads(line) for line in cli("info", *paths, "--json").stdout.splitlines()]
    assert [o["file"] for o in objects] == [str(p) for p in paths]
    assert all(o["job"]["seed"] == 77 for o in objects)


def test_saving_never_replaces_a_file_unless_asked(tmp_path):
    path = tmp_path / "light.png"
    path.write_bytes(b"someone's")
    with pytest.raises(OutputExists):
        result().save(path)
    assert path.read_bytes() == b"someone's"
    result().save(path, overwrite=True)
    with Image.open(path) as im:
        assert im.size == (128, 96)


def test_the_format_follows_the_suffix_and_stages_are_saved_beside(tmp_path):
    path = tmp_path / "light.jpg"
    result(stage_images=True).save(path, save_stages=True)
    with Image.open(path) as im, Image.open(tmp_path / "light.stage0.jpg") as stage0:
        assert im.format == stage0.format == "JPEG"
        assert stage0.size == (64, 48)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["light.jpg", "light.stage0.jpg"]


def test_stages_a_result_did_not_keep_are_an_error_not_a_silence(tmp_path):
    with pytest.raises(OutputUsage, match="save_stages=True"):
        result().save(tmp_path / "light.png", save_stages=True)
    assert not list(tmp_path.iterdir())


def test_a_stage_image_names_the_linfusion_that_ran_as_the_image_does(tmp_path, asked):
    """A --save-stages stage image recorded the job's 'auto', so `hires info` said
    'linfusion auto' of it and 'linfusion tiny' of the image."""
    out = tmp_path / "a.png"
    result = cli("gen", "x", "--model", "tiny", "--size", "512", "--steps", "1", "--save-stages",
                 "-o", out, "-q")
    assert result.exit_code == 0, result.stderr
    stage, whole = (read_metadata(p)["hires"]["result"] for p in (tmp_path / "a.stage0.png", out))
    assert stage["linfusion"] == whole["linfusion"] == "tiny"
    info = cli("info", tmp_path / "a.stage0.png").stdout
    assert "linfusion tiny" in info


def test_a_save_refused_for_an_existing_image_writes_no_stage_either(tmp_path):
    """The stages were written first, then the image's path was found taken."""
    path = tmp_path / "light.png"
    path.write_bytes(b"someone's")
    with pytest.raises(OutputExists, match="overwrite=True"):
        result(stage_images=True).save(path, save_stages=True)
    assert [p.name for p in tmp_path.iterdir()] == ["light.png"]
    assert path.read_bytes() == b"someone's"
    result(stage_images=True).save(path, save_stages=True, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["light.png", "light.stage0.png"]


def test_the_local_references_are_those_of_the_folder_the_job_ran_in(tmp_path, monkeypatch):
    """Which references were local files was decided at the save, from the folder then: a
    script that changed folders in between recorded a local model as a Hub id."""
    from dataclasses import replace

    (tmp_path / "ran" / "sub" / "model").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "ran")
    made = Result(Image.new("RGB", (128, 96)), replace(JOB, model="sub/model"), None, [],
                  1.25, None)  # type: ignore[arg-type]
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert made.save(tmp_path / "light.png").get("local") == ["model"]
    assert read_metadata(tmp_path / "light.png")["hires"]["result"]["local"] == ["model"]


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="a Linux /proc file")
def test_a_cpu_peak_is_since_the_last_reset_not_the_largest_since_start(monkeypatch):
    """On the CPU each stage's and image's peak_memory was the process's ru_maxrss: never
    reset, so after one large stage every later figure repeated it (`--n 3` only rose)."""
    import numpy as np
    import torch

    from hires import memory
    from hires.memory import peak_memory, peak_rss, reset_peak

    monkeypatch.setattr(memory, "CPU_PEAK_PER_STAGE", True)  # as the CLI runs
    cpu = torch.device("cpu")
    big = np.ones(512 << 20, dtype=np.uint8)  # touched: 512 MiB resident
    before = peak_memory(cpu)
    del big
    reset_peak(cpu)
    after = peak_memory(cpu)
    assert before is not None and after is not None
    assert after < before - (256 << 20), (before, after)
    # the process's own peak stands (the benchmarks report it); the kernel updates its mark
    # lazily: read while the array lived, it showed a little more than it kept
    assert peak_rss() > before - (16 << 20), (peak_rss(), before)


def test_a_library_caller_keeps_its_processs_peak():
    """The reset per stage wiped the calling program's peak: ru_maxrss reads the same counter.
    Only the CLI, whose process it is, resets it."""
    import resource
    import subprocess
    import sys

    script = """
import resource, numpy as np, torch
from hires import memory
big = np.ones(512 << 20, dtype=np.uint8); del big
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
memory.reset_peak(torch.device("cpu"))  # as hires.generate does before each stage
print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
    said = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert said.returncode == 0, said.stderr
    before, after = map(int, said.stdout.split())
    assert after >= before > (512 << 10), said.stdout  # KiB
    del resource


def test_a_save_its_format_refuses_writes_no_stage_first(tmp_path):
    """A 16-bit image saved as a JPEG (or a WebP over 16383 px) was refused after its stages'
    files were written, and they were left behind."""
    import numpy as np

    from hires.output import OutputUsage

    deep = result(stage_images=True)
    deep.pixels16 = np.zeros((96, 128, 3), np.uint16)
    with pytest.raises(OutputUsage, match="8 bits a channel"):
        deep.save(tmp_path / "light.jpg", save_stages=True)
    wide = result(stage_images=True)
    wide.image = wide.stage_images[-1] = Image.new("RGB", (16384, 8), "teal")
    with pytest.raises(OutputUsage, match="16383"):
        wide.save(tmp_path / "light.webp", save_stages=True)
    assert not list(tmp_path.iterdir())
    # a stage the format refuses (its size) is found before anything is written too
    early = result(stage_images=True)
    early.stage_images[0] = Image.new("RGB", (16384, 8), "navy")
    with pytest.raises(OutputUsage, match="light.stage0.webp: WebP"):
        early.save(tmp_path / "light.webp", save_stages=True)
    assert not list(tmp_path.iterdir())


def test_a_saved_result_records_the_format_its_file_has(tmp_path):
    """Result.save('a.jpg') of a PNG job recorded format png: `--from a.jpg` wrote a PNG, and
    the settings hash was not the one `-o a.jpg` records."""
    from dataclasses import replace

    for name, fmt in (("a.jpg", "jpg"), ("b.tif", "tiff"), ("c.webp", "webp")):
        record = result(stage_images=True).save(tmp_path / name, save_stages=True)
        as_cli = replace(JOB, format=fmt)
        assert record["settings"] == settings_hash(as_cli)
        for path in (tmp_path / name, tmp_path / name.replace(".", ".stage0.")):
            saved = read_metadata(path)["hires"]
            assert saved["job"]["format"] == fmt
            assert saved["result"]["settings"] == settings_hash(as_cli)
        assert job_values_from_image(tmp_path / name)["format"] == fmt
    # fmt= names it too
    record = result().save(tmp_path / "d", fmt="jpeg")
    assert read_metadata(record["path"])["hires"]["job"]["format"] == "jpg"
