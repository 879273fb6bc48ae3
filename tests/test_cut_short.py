"""An image cut short (a copy that stopped early) keeps its record at its start: runs took it
for the image made already and kept it, exit 0, and `hires info` showed it as whole."""

import os

import pytest
from helpers_cli import cli, error_lines
from PIL import Image

from hires.cut_short import cut_short

GEN = ("gen", "a cat", "--model", "tiny", "--size", "256", "--steps", "2", "--seed", "1", "-q")


def noisy() -> Image.Image:
    """An image that compresses to tens of kilobytes, not a few hundred bytes."""
    return Image.merge("RGB", [Image.effect_noise((300, 200), 60 + 10 * i) for i in range(3)])


def cut(path, keep=0.6) -> None:
    with open(path, "r+b") as f:
        f.truncate(int(os.path.getsize(path) * keep))


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".tiff"])
def test_whole_images_pass_and_cut_ones_are_found(suffix, tmp_path):
    path = tmp_path / f"a{suffix}"
    # Pillow's TIFF keeps its directory at the start, as other tools' do: the strips say it
    noisy().save(path)
    assert cut_short(path) is None
    cut(path)
    assert cut_short(path).startswith("cut short (") and "its end missing" in cut_short(path)


@pytest.mark.parametrize(("suffix", "options"), [(".jpg", {"progressive": True}),
                                                  (".jpg", {}), (".png", {}), (".webp", {})])
def test_bytes_after_the_images_end_are_no_fault(suffix, options, tmp_path):
    """A camera's trailer or padding after a JPEG's end marker or a PNG's IEND: the image is
    whole (it read as cut short, and gen refused it)."""
    path = tmp_path / f"a{suffix}"
    noisy().save(path, **options)
    with open(path, "ab") as f:
        f.write(b"\0" * 40 + b"a trailer \xff\xd8 IEND")
    assert cut_short(path) is None
    cut(path, 0.95)
    assert cut_short(path) is not None


def test_other_files_are_not_judged(tmp_path):
    (tmp_path / "a.txt").write_text("not an image")
    assert cut_short(tmp_path / "a.txt") is None and cut_short(tmp_path / "gone.png") is None


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_gen_does_not_keep_its_image_cut_short(suffix, tmp_path, asked):
    out = tmp_path / f"cat{suffix}"
    assert cli(*GEN, "-o", out).exit_code == 0
    cut(out)
    again = cli(*GEN, "-o", out)
    assert again.exit_code == 2, again.stderr
    assert error_lines(again.stderr) == [again.stderr.strip()]
    assert "holds this job's image, cut short (" in again.stderr
    assert "pass --overwrite to make it again" in again.stderr
    shown = cli("info", out)
    assert shown.exit_code == 0 and "its pixels are not all there" in shown.stderr
    made = cli(*GEN, "-o", out, "--overwrite")
    assert made.exit_code == 0 and cut_short(out) is None
    assert cli(*GEN, "-o", out).exit_code == 0  # whole again: made already, kept


def batch_image_cut(tmp_path, name: str):
    """A batch of one job that made `name` in tmp_path/out, then the image cut to half: the
    job file, the image and its size now."""
    jobs = tmp_path / "jobs.toml"
    jobs.write_text('[defaults]\nmodel = "tiny"\nsize = 256\nsteps = 2\nseed = 1\n'
                    f'[[job]]\nprompt = "a cat"\noutput = "{name}"\n')
    assert cli("batch", jobs, "-o", tmp_path / "out", "-q").exit_code == 0
    image = tmp_path / "out" / name
    cut(image, 0.5)
    return jobs, image, os.path.getsize(image)


def test_a_batch_sets_its_image_cut_short_aside_and_makes_it_again(tmp_path, asked):
    jobs, image, size = batch_image_cut(tmp_path, "cat.png")
    dry = cli("batch", jobs, "-o", tmp_path / "out", "--dry-run")
    assert "1 to make; 0 made already" in dry.stdout, dry.stdout
    again = cli("batch", jobs, "-o", tmp_path / "out")
    assert again.exit_code == 0, again.stderr
    kept = [p for p in image.parent.glob("cat.*.png")]
    assert len(kept) == 1 and os.path.getsize(kept[0]) == size  # the user's bytes, aside
    assert (f"job 0: cat.png was cut short ({size:,} bytes, its end missing); it is kept as "
            f"{kept[0].name}") in again.stderr
    assert cut_short(image) is None


def test_hires_tiff_cut_short_is_found_though_its_directory_is_gone(tmp_path, asked):
    """hires writes a TIFF's directory, and its record, after the strips: a copy cut short lost
    both, read as "cannot identify image file", and a batch refused it as anyone's file."""
    out = tmp_path / "cat.tif"
    assert cli(*GEN, "-o", out).exit_code == 0
    cut(out, 0.5)
    size = os.path.getsize(out)
    said = f"cut short ({size:,} bytes, its end missing)"
    assert cut_short(out) == said
    again = cli(*GEN, "-o", out)  # no record to say whose: kept, but said why it is no use
    assert error_lines(again.stderr) == [
        f"error: {out} already exists, {said}; pass --overwrite or choose another -o"]
    shown = cli("info", out)
    assert error_lines(shown.stderr) == [  # what to do said, as `up` says it
        f"error: cannot read {out} as an image: it is {said}; copy the whole file again"]
    up = cli("up", out, "--model", "tiny", "--size", "512", "-o", tmp_path / "up.png")
    assert error_lines(up.stderr) == [
        f"error: {out}: truncated image, {said}; re-export or re-download it"]
    assert "Warning" not in up.stderr  # Pillow's "Corrupt EXIF data" on the way


@pytest.mark.parametrize("suffix", [".tif", ".webp"])
def test_a_batch_sets_a_cut_image_aside_though_its_record_is_gone(tmp_path, asked, suffix):
    """A TIFF's and a WebP's record follow the pixels: cut short, they have none."""
    jobs, image, size = batch_image_cut(tmp_path, f"cat{suffix}")
    again = cli("batch", jobs, "-o", tmp_path / "out")
    assert again.exit_code == 0, again.stderr
    assert (f"job 0: cat{suffix} was cut short ({size:,} bytes, its end missing); it is kept "
            f"as cat.cut-short{suffix}") in again.stderr
    aside = image.with_name(f"cat.cut-short{suffix}")
    assert os.path.getsize(aside) == size and cut_short(image) is None
    # Cut again: the name taken, the next one beside it (the batch failed the job).
    cut(image, 0.5)
    size = os.path.getsize(image)  # the record's timings make sizes differ by a byte or so
    assert cli("batch", jobs, "-o", tmp_path / "out", "-q").exit_code == 0
    assert os.path.getsize(image.with_name(f"cat.cut-short-2{suffix}")) == size
    # A TIFF whose directory is there is judged by its strips, and one that names none in
    # its header is damaged, not cut: neither is set aside as cut.
    (tmp_path / "odd.tif").write_bytes(b"II*\0" + b"\0" * 60)
    assert cut_short(tmp_path / "odd.tif") is None


def test_a_tiff_cut_anywhere_is_found(tmp_path, asked):
    """Cut in its last bytes (the record, held after the directory) it read as whole: `info`
    said "not made by hires"."""
    out = tmp_path / "cat.tif"
    assert cli(*GEN, "-o", out).exit_code == 0
    data = out.read_bytes()
    # The last byte is the record's padding to a word (its text ends 1 byte before)
    for keep in (len(data) - 2, len(data) - 100, len(data) - 2000, len(data) // 2, 16):
        out.write_bytes(data[:keep])
        assert cut_short(out) is not None, keep


def test_a_batch_keeps_refusing_a_cut_file_of_another_format_without_a_record(tmp_path):
    """Only a TIFF loses its record with its end: a JPEG cut short with none was never a
    job's, and was moved aside as if it were the job's own image."""
    jobs = tmp_path / "jobs.toml"
    jobs.write_text('[defaults]\nmodel = "tiny"\nsize = 256\nsteps = 2\nseed = 1\n'
                    '[[job]]\nprompt = "a cat"\noutput = "mine.jpg"\n')
    (tmp_path / "out").mkdir()
    mine = tmp_path / "out" / "mine.jpg"
    noisy().save(mine)
    cut(mine, 0.5)
    result = cli("batch", jobs, "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert "mine.jpg exists but holds no hires settings record" in result.stderr
    assert sorted(p.name for p in mine.parent.iterdir()) == ["mine.jpg"]


def test_up_says_a_webp_input_is_cut_short(tmp_path):
    """Pillow opens a WebP cut short and fails to decode it ("could not create decoder
    object"): up said "truncated or corrupt", not that its end is missing."""
    path = tmp_path / "in.webp"
    noisy().save(path)
    cut(path, 0.5)
    said = cli("up", path, "--model", "tiny", "--size", "512", "--dry-run")
    assert error_lines(said.stderr) == [
        f"error: {path}: truncated image, cut short ({os.path.getsize(path):,} bytes, its end "
        "missing); re-export or re-download it"]
