"""One image of several that fails at run time (`up` of many inputs, `gen --n`): said in its
own line, with a failed record under --json, and the others made; exit 1, as a batch's."""

import numpy as np
from helpers_cli import cli, error_lines, json_lines
from PIL import Image

import hires.cli_batch
import hires.cli_runs


def test_an_input_gone_mid_run_fails_alone_and_the_others_are_made(tmp_path, monkeypatch,
                                                                   asked):
    """The run stopped at it, exit 2 (a usage error 'found before the first step'), with no
    line on stdout for it or for the inputs after it (found by QA)."""
    inputs = [tmp_path / f"in{i}.png" for i in range(3)]
    for i, path in enumerate(inputs):
        Image.fromarray(np.full((48, 64, 3), 40 * i, np.uint8)).save(path)
    real = hires.cli_runs.make_image

    def make_image(job, path, *args, **kwargs):
        if job.image == str(inputs[0]):
            inputs[1].unlink()  # gone while the first is made
        return real(job, path, *args, **kwargs)

    monkeypatch.setattr(hires.cli_runs, "make_image", make_image)
    out = tmp_path / "out"
    result = cli("up", *inputs, "--scale", "2", "--model", "tiny", "--steps", "1", "--seed", "1",
                 "-o", f"{out}/", "--json")
    assert result.exit_code == 1, result.stderr
    lines = json_lines(result.stdout)
    assert [line["status"] for line in lines] == ["done", "failed", "done"]
    failed = lines[1]
    assert failed["image"] == str(inputs[1]) and "no such file" in failed["error"]
    assert (failed["width"], failed["height"], failed["seed"]) == (128, 96, 1)
    errors = error_lines(result.stderr)
    assert errors[0].startswith(f"error: {failed['path']} (image 2 of 3) failed: ")
    assert errors[-1].startswith("error: 1 of 3 images failed (")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [lines[0]["path"].split("/")[-1], lines[2]["path"].split("/")[-1]])


def test_a_batch_lines_failed_record_says_its_size_and_seed(tmp_path, monkeypatch, asked):
    """A failed or busy line carried no seed, width or height, which a done one has: a script
    reading d["width"] of every line failed on it (found by QA)."""
    image = tmp_path / "gone.png"
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(image)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(f'{{"image": "{image}", "scale": 2, "model": "tiny", "steps": 1, '
                    f'"seed": 4}}\n')
    real = hires.cli_batch.make_image

    def make_image(job, path, *args, **kwargs):
        image.unlink()  # gone once its job starts
        return real(job, path, *args, **kwargs)

    monkeypatch.setattr(hires.cli_batch, "make_image", make_image)
    result = cli("batch", jobs, "-o", tmp_path / "out", "--json")
    assert result.exit_code == 1, result.stderr
    line = json_lines(result.stdout)[0]
    assert line["status"] == "failed"
    assert (line["width"], line["height"], line["seed"]) == (128, 96, 4)
    manifest = json_lines((tmp_path / "out" / "manifest.jsonl").read_text())[0]
    assert (manifest["width"], manifest["seed"], manifest["status"]) == (128, 4, "failed")


def test_when_every_image_fails_the_closing_line_says_all(tmp_path, monkeypatch, asked):
    """It said "3 of 3 images failed ...; the others are made" (found by QA)."""
    def make_image(job, path, *args, **kwargs):
        raise RuntimeError("the GPU fell off the bus")

    monkeypatch.setattr(hires.cli_runs, "make_image", make_image)
    result = cli("gen", "x", "--model", "tiny", "--size", "128", "--steps", "1", "--n", "2",
                 "-o", f"{tmp_path}/", "--json")
    assert result.exit_code == 1
    assert [line["status"] for line in json_lines(result.stdout)] == ["failed", "failed"]
    last = error_lines(result.stderr)[-1]
    assert last.startswith("error: all 2 images failed (") and "others" not in last, last
    assert last.endswith("once the cause is fixed, the same command makes them"), last


def test_a_folder_made_at_an_images_path_is_not_told_overwrite(tmp_path):
    """A folder made at an image's path mid-run was told "already exists; pass --overwrite",
    which cannot replace a folder (found by QA)."""
    import pytest

    from hires.output import OutputUnwritable, save_image

    (tmp_path / "x.png").mkdir()
    for overwrite in (False, True):
        with pytest.raises(OutputUnwritable, match="x.png is a folder, and hires never writes "
                           "over a folder: move it away or choose another -o"):
            save_image(Image.new("RGB", (8, 8)), tmp_path / "x.png", overwrite=overwrite)
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]  # no temp file left
