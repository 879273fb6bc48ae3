"""Image sizes from every level that sets a job: presets, batch files, flags, records, and an
upscale's input (its aspect kept)."""

import json

import pytest
from helpers_cli import assert_usage_error, cli, write
from PIL import Image

from hires import __version__
from hires.batch import BatchItem, name_outputs, read_batch
from hires.images import input_size, load_input
from hires.job import Job, JobError
from hires.output import save_image
from hires.presets import load_preset
from hires.sizes import OPTIONS, layered_size


def levels(*tables):
    return [(t, f"level {i}") for i, t in enumerate(tables[:-1])] + [(tables[-1], OPTIONS)]


def test_the_most_specific_level_decides_and_borrows_what_it_leaves_out():
    assert layered_size(levels({"size": 8192}, {})) == (8192, 8192)
    assert layered_size(levels({}, {})) is None
    # Only an aspect: the long side from below (a preset's size, or its width/height).
    assert layered_size(levels({"size": 8192}, {"aspect": "16:9"})) == (8192, 4608)
    assert layered_size(levels({"width": 4096, "height": 4096}, {"aspect": "1:2"})) == (
        2048, 4096)
    # Only a long side: the shape from below.
    assert layered_size(levels({"width": 3000, "height": 1000}, {"size": 6000})) == (6000, 2000)
    assert layered_size(levels({"size": 512, "aspect": "2:1"}, {"size": 1024})) == (1024, 512)
    # Exact sides ignore everything below.
    assert layered_size(levels({"size": 512, "aspect": "2:1"}, {"width": 64, "height": 128})
                        ) == (64, 128)


def test_what_a_level_leaves_out_comes_from_the_nearest_level_below_that_gives_it():
    """Only the next level down was asked: [defaults]' aspect hid a preset's long side (the
    job was refused: "'aspect' ... needs a long side"), and a size there its shape (square)."""
    preset, shape_only, side_only = {"size": 4096, "aspect": "16:9"}, {"aspect": "1:1"}, {
        "size": 2048}
    assert layered_size(levels({"size": 4096}, {"aspect": "16:9"}, {"aspect": "1:1"})) == (
        4096, 4096)
    assert layered_size(levels(preset, side_only, {"size": 1024})) == (1024, 576)
    assert layered_size(levels(preset, shape_only, {"size": 1024})) == (1024, 1024)
    # over a print size, the largest of that shape the paper holds (A4 at 100 dpi: 824 x 1168)
    assert layered_size(levels({"print_size": "A4"}, {"aspect": "2:1"}, shape_only), dpi=100
                        ) == (824, 824)
    assert layered_size(levels({"print_size": "A4"}, {"aspect": "2:1"}), dpi=100
                        ) == (1168, 584)


def test_a_batch_job_takes_a_presets_long_side_past_an_aspect_in_defaults(tmp_path):
    jobs = write(tmp_path / "jobs.toml", '[defaults]\naspect = "16:9"\n[[job]]\nprompt = "a"\n'
                 'preset = "4k"\n[[job]]\nprompt = "b"\npreset = "4k"\naspect = "1:1"\n')
    assert [(i.job.width, i.job.height) for i in read_batch(jobs)] == [(4096, 2304),
                                                                      (4096, 4096)]


def test_an_upscale_keeps_its_input_aspect():
    photo = (451, 300)
    assert layered_size(levels({"size": 904}), photo) == (904, 600)
    assert layered_size(levels({"scale": 2}), photo) == (904, 600)
    assert layered_size(levels({"size": 8192}, {}), photo) == (8192, 5448)  # a preset's size
    assert layered_size(levels({"width": 904, "height": 904}), photo) == (904, 904)  # asked
    read = []
    assert layered_size(levels({"width": 904, "height": 904}), lambda: read.append(1)) == (
        904, 904)
    assert not read  # exact sides need no input size: the image is not opened
    with pytest.raises(JobError, match="keeps its input's aspect"):
        layered_size(levels({"size": 904, "aspect": "1:1"}), photo)


@pytest.mark.parametrize("table,words", [
    ({"size": 512, "width": 512, "height": 512}, "not both"),
    ({"width": 512}, "go together"),
    ({"scale": 2, "size": 512}, "give one of"),
    ({"scale": 0}, "positive number"),
    ({"scale": "2x"}, "positive number"),
    ({"size": 500}, "multiple of 8"),
    ({"size": 512.5}, "whole number"),
    ({"aspect": "wide", "size": 512}, "aspect"),
])
def test_bad_size_keys_say_what_to_do_and_where(table, words):
    with pytest.raises(JobError, match=words) as caught:
        layered_size([(table, "jobs.toml job 2")])
    assert "(in jobs.toml job 2)" in str(caught.value) and "--" not in str(caught.value)


def test_scale_without_an_input_and_aspect_without_a_size_are_refused():
    with pytest.raises(JobError, match="--scale multiplies an input image's size"):
        layered_size(levels({"scale": 2}))
    # A preset of only a shape pairs with a --size: said so, not only that it lacks one.
    with pytest.raises(JobError, match=r"^'aspect' in preset 'wide' needs a long side: give "
                       r"--size \(in pixels\) with it, or set 'size' there$"):
        layered_size([({"aspect": "16:9"}, "preset 'wide'")])
    with pytest.raises(JobError, match=r"^--aspect needs --size \(the long side in pixels\)$"):
        layered_size([({"aspect": "16:9"}, OPTIONS)])


def test_input_size_reads_the_header_and_turns_with_exif(tmp_path):
    path = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # a phone held upright: stored 40 x 24, shown 24 x 40
    Image.new("RGB", (40, 24), "red").save(path, exif=exif)
    assert input_size(path) == load_input(path).rgb.size == (24, 40)
    with pytest.raises(ValueError, match="no such file"):
        input_size(tmp_path / "missing.png")


def test_presets_take_size_aspect_and_scale(tmp_path, monkeypatch):
    monkeypatch.setenv("HIRES_PRESETS", str(tmp_path))
    write(tmp_path / "wide.toml", 'size = 4096\naspect = "16:9"\nsteps = 7\n')
    write(tmp_path / "x4.toml", 'scale = 4\n')
    assert load_preset("wide").values["aspect"] == "16:9"
    assert load_preset("8k").values["size"] == 8192  # shipped presets give a long side
    write(tmp_path / "typo.toml", "sise = 4096\n")
    with pytest.raises(JobError, match="did you mean 'size'"):
        load_preset("typo")
    write(tmp_path / "both.toml", "size = 4096\nwidth = 4096\nheight = 4096\n")
    with pytest.raises(JobError, match="not both.*preset 'both'"):
        load_preset("both")
    plan = cli("plan", "--preset", "wide", "--size", "2048")
    assert plan.exit_code == 0 and plan.stdout.startswith("2048x1152:")
    assert cli("plan", "--preset", "8k", "--aspect", "2:1").stdout.startswith("8192x4096:")
    photo = tmp_path / "photo.png"
    Image.new("RGB", (160, 104), "grey").save(photo)
    up = cli("up", str(photo), "--preset", "x4", "--dry-run")
    assert up.exit_code == 0 and up.stdout.startswith("640x416:")
    up = cli("up", str(photo), "--preset", "8k", "--dry-run", "--gpu", "h100")
    assert up.stdout.startswith("8192x5328:")  # the preset's long side, the photo's aspect
    assert_usage_error(cli("gen", "x", "--preset", "x4", "--dry-run"), "'scale'", "upscales",
                       "preset 'x4'")


def test_batch_upscale_jobs_keep_the_input_aspect(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (160, 104), "grey").save("photo.png")
    jobs = write(tmp_path / "jobs.toml", '[defaults]\nsize = 512\n'
                 '[[job]]\nprompt = "made"\n'
                 '[[job]]\nimage = "photo.png"\n'
                 '[[job]]\nimage = "photo.png"\nscale = 4\n'
                 '[[job]]\nimage = "photo.png"\nwidth = 320\nheight = 320\n')
    items = read_batch(jobs)
    assert [(i.job.width, i.job.height) for i in items] == [
        (512, 512), (512, 336), (640, 416), (320, 320)]
    items = [BatchItem(i.index, i.job, "{index}-{name}") for i in items]
    assert [p.name for p in name_outputs(items, tmp_path, "jobs.toml")[1].values()] == [
        "0-made.png", "1-photo.png", "2-photo.png", "3-photo.png"]
    no_size = write(tmp_path / "none.toml", '[[job]]\nimage = "photo.png"\n')
    with pytest.raises(JobError, match="^none.toml job 0: give one of 'size', 'scale'"):
        read_batch(no_size)
    missing = write(tmp_path / "missing.toml", '[[job]]\nimage = "gone.png"\nscale = 2\n')
    with pytest.raises(JobError, match="missing.toml job 0: gone.png: no such file"):
        read_batch(missing)


def test_a_new_size_for_a_recorded_job_keeps_its_shape(tmp_path):
    job = Job(prompt="wide", width=1024, height=576, seed=3)
    made = tmp_path / "wide.png"
    save_image(Image.new("RGB", (1024, 576)), made,
               metadata={"hires": __version__, "job": job.to_dict(), "result": {}})
    plan = cli("plan", "--from", str(made), "--size", "2048")
    assert plan.exit_code == 0 and plan.stdout.startswith("2048x1152:")
    assert cli("plan", "--from", str(made)).stdout.startswith("1024x576:")


def test_a_print_size_is_its_pixels_at_the_dpi_and_the_file_records_that_dpi(tmp_path):
    from hires.sizes import job_from_levels, print_pixels

    assert print_pixels("60x90cm", None) == (7088, 10632)  # 300 dpi: 7086.6 -> 7088 px
    assert print_pixels("600 x 900 mm", 300) == (7088, 10632)
    assert print_pixels('24x36"', 150) == print_pixels("24x36in", 150) == (3600, 5400)
    assert print_pixels("A2", 300) == print_pixels("420x594mm", 300) == (4960, 7016)
    assert print_pixels("a2-landscape", 300) == (7016, 4960)
    assert print_pixels("Letter", 100) == (848, 1104)  # 8.5 x 11 in
    # Bleed on every side: A2 + 3 mm is 426 x 600 mm.
    assert print_pixels("A2+3mm", 300) == print_pixels("426x600mm", 300) == (5032, 7088)
    assert print_pixels("24x36in + 0.125in", 100) == (2424, 3624)
    job = job_from_levels([({"print_size": "24x36in"}, OPTIONS, False)])
    assert (job.width, job.height, job.dpi) == (7200, 10800, 300)
    # A dpi from any level prices the print; a size below borrows the print's shape.
    job = job_from_levels([({"print_size": "24x36in"}, "preset 'poster'", True),
                           ({"dpi": 200}, OPTIONS, False)])
    assert (job.width, job.height, job.dpi) == (4800, 7200, 200)
    assert layered_size(levels({"print_size": "20x10cm"}, {"size": 1024})) == (1024, 512)
    # An aspect over a print: the largest of that shape the paper holds, turned to it (it was
    # the paper's long side, a 59.4 x 59.4 cm "A2" print).
    assert layered_size(levels({"print_size": "A2"}, {"aspect": "1:1"})) == (4960, 4960)
    assert layered_size(levels({"print_size": "A2"}, {"aspect": "16:9"})) == (7016, 3944)
    assert layered_size(levels({"print_size": "A2"}, {"aspect": "1:2"})) == (3504, 7016)
    job = job_from_levels([({"print_size": "A2"}, "preset 'a2'", True),
                           ({"aspect": "1:1"}, OPTIONS, False)])
    assert (job.width, job.dpi) == (4960, 300)  # the paper's short side, at the print's dpi
    job = job_from_levels([({"print_size": "A2"}, "preset 'a2'", True),
                           ({"size": 1024}, OPTIONS, False)])
    assert (job.width, job.height, job.dpi) == (728, 1024, None)  # its shape only: no print
    # An upscale keeps its input's shape: as large as fits the print, turned to its orientation.
    assert layered_size(levels({"print_size": "6x4in"}), (451, 300), dpi=100) == (600, 400)
    assert layered_size(levels({"print_size": "4x6in"}), (451, 300), dpi=100) == (600, 400)
    assert layered_size(levels({"print_size": "4x6in"}), (300, 451), dpi=100) == (400, 600)
    assert layered_size(levels({"print_size": "6x4in"}), (400, 300), dpi=100) == (536, 400)
    with pytest.raises(JobError, match="makes images larger"):
        layered_size(levels({"print_size": "6x4in"}), (451, 300), dpi=50)


def test_an_upscale_s_print_is_held_to_the_side_limit_by_what_it_makes():
    """A 4:3 photo on a 60x90 cm print fills 80x60 cm of it: at 1000 dpi 31496x23624 px, in
    range, but the whole print (23624x35432) was checked and refused ("at most 924 dpi")."""
    from hires.sizes import fit_print, print_pixels

    assert print_pixels("60x90cm", 1000, (400, 300)) == fit_print((400, 300), 23624, 35432)
    with pytest.raises(JobError, match="fitted to it 32792x24592, more than the 32768 px") as e:
        print_pixels("60x90cm", 1041, (400, 300))
    most = int(str(e.value).split("at most ")[1].split()[0])
    assert max(print_pixels("60x90cm", most, (400, 300))) <= 32768  # the advice holds
    with pytest.raises(JobError, match=f"at most {most} dpi"):
        print_pixels("60x90cm", most + 1, (400, 300))  # and is the most
    with pytest.raises(JobError, match="at most 924 dpi"):  # the print itself, from noise
        print_pixels("60x90cm", 1000)
    # Past the limit at 1 dpi: a smaller print, not "1 times longer than wide ... closer to square"
    with pytest.raises(JobError, match="33000 px on its long side even at 1 dpi.*a smaller print$"):
        print_pixels("33000x33000in", 300)
    # A 1 px wide input needs 15230 dpi to fill 1 cm: past the 10000 dpi taken, not offered.
    with pytest.raises(JobError, match="less than the 64 px a side hires makes; a larger print$"):
        print_pixels("1x1cm", 300, (1, 100))


@pytest.mark.parametrize("table,words", [
    ({"print_size": "60x90"}, "with its unit"),
    ({"print_size": "60x90ft"}, "must look like 60x90cm"),
    ({"print_size": "0x90cm"}, "must look like"),
    ({"print_size": "60x90cm", "size": 4096}, "--print-size sets both sides: drop --size"),
    # all of them: dropping --height alone left --width, refused again
    ({"print_size": "A2", "width": 512, "height": 512},
     "--print-size sets both sides: drop --height and --width$"),
    ({"print_size": "200x300cm"}, "at most 277 dpi for that print"),
    ({"print_size": "A2+3"}, "bleed must look like \\+3mm"),
])
def test_bad_print_sizes_say_what_to_do(table, words):
    with pytest.raises(JobError, match=words):
        layered_size(levels(table))


def test_print_size_from_the_command_line_a_batch_file_and_a_preset(tmp_path):
    result = cli("plan", "--print-size", "60x90cm", "--model", "tiny", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["width"] == 7088
    text = cli("plan", "--print-size", "24x36in", "--dpi", "150").stdout.splitlines()[0]
    assert text.startswith("3600x5400 (61.0 x 91.4 cm, 24.0 x 36.0 in at 150 dpi): ")
    assert_usage_error(cli("plan", "--print-size", "60x90"), "with its unit")
    jobs = write(tmp_path / "jobs.toml", '[defaults]\nprint-size = "10x15cm"\n[[job]]\n'
                 'prompt = "a"\n[[job]]\nprompt = "b"\nprint_size = "15x10cm"\ndpi = 100\n')
    assert [(i.job.width, i.job.height, i.job.dpi) for i in read_batch(jobs)] == [
        (1184, 1768, 300), (592, 392, 100)]
    preset = write(tmp_path / "postcard.toml", 'description = "a postcard"\n'
                   'print_size = "148x105mm"\n')
    plan = json.loads(cli("plan", "--preset", str(preset), "--json").stdout)
    assert (plan["width"], plan["height"], plan["dpi"]) == (1752, 1240, 300)


def _suggested(message: str, flag: str) -> float:
    """The value a refusal suggests for `flag` ('use --scale 1.6 or more' -> 1.6)."""
    import re

    return float(re.search(rf"{flag} ([\d.]+) or (more|less)", message).group(1))


@pytest.mark.parametrize("source,given,words", [
    ((300, 200), {"scale": 1e9}, "32768 px a side hires makes; use --scale 109.22 or less"),
    ((60, 40), {"scale": 1}, "makes 60x40 px from the 60x40 input, less than the 64 px"),
    ((1, 1), {"scale": 2}, "makes 2x2 px from the 1x1 input, less than"),  # not "0x0 ... smaller"
    ((60, 40), {"size": 64}, "use --size 96 or more"),
    ((20000, 40), {"scale": 2}, "use --scale 1.63 or less"),
    ((67, 67), {"scale": 1}, "smaller than the 67x67 input; ask for --scale 1.02 or more"),
    ((40, 30), {"scale": 1.5}, "use --scale 2 or more"),  # said 2.14: 2 makes 80x64
    ((40, 30), {"size": 64}, "use --size 80 or more"),  # said 88
    ((300, 200), {"size": 200}, "ask for --size 304 or more"),
])
def test_an_upscale_size_out_of_range_names_the_flag_value_that_works(source, given, words):
    from hires.sizes import target_size

    with pytest.raises(JobError, match=words.replace(".", "\\.")) as caught:
        target_size(source, **given)
    flag = next(iter(given))
    suggested = _suggested(str(caught.value), f"--{flag}")
    w, h = target_size(source, **{flag: suggested})
    assert 64 <= min(w, h) and max(w, h) <= 32768 and w >= source[0] and h >= source[1]
    if "or more" in str(caught.value):  # the least that works, as rounded to 8 px
        with pytest.raises(JobError):
            target_size(source, **{flag: suggested - (0.01 if flag == "scale" else 8)})


@pytest.mark.parametrize("given,keeps", [({"scale": 2}, "--scale 3.96"),
                                         ({"size": 2000}, "--size 15840")])
def test_a_least_that_crops_names_one_that_keeps_the_whole_input(given, keeps):
    """4000x16 at the least --scale said, 3.75, makes 15000x64: its 8 px steps cut 6 % off
    the picture, with a warning (found by QA). The one that keeps it all is named too."""
    from hires.images import crops
    from hires.sizes import target_size

    with pytest.raises(JobError, match=f"or more \\({keeps} keeps all of it\\)") as caught:
        target_size((4000, 16), **given)
    flag = next(iter(given))
    least = _suggested(str(caught.value), f"--{flag}")
    assert crops((4000, 16), *target_size((4000, 16), **{flag: least}))
    assert not crops((4000, 16), *target_size((4000, 16), **{flag: float(keeps.split()[1])}))
    # where the least keeps it all, nothing more is said
    with pytest.raises(JobError) as caught:
        target_size((40, 30), scale=1.5)
    assert "keeps all" not in str(caught.value)


def test_a_least_dpi_that_crops_names_one_that_keeps_the_whole_input():
    """As for --scale: a print's least dpi fitted a 4000x16 strip to 15000x64, 6 % cut off."""
    import re

    from hires.images import crops
    from hires.sizes import print_pixels

    with pytest.raises(JobError, match=r"at least \d+ dpi for that print \(--dpi\) \(\d+ dpi "
                       "keeps all of it\\)") as caught:
        print_pixels("10x10cm", 300, (4000, 16))
    least, whole = map(int, re.findall(r"(\d+) dpi", str(caught.value))[-2:])
    assert crops((4000, 16), *print_pixels("10x10cm", least, (4000, 16)))
    assert not crops((4000, 16), *print_pixels("10x10cm", whole, (4000, 16)))
    assert crops((4000, 16), *print_pixels("10x10cm", whole - 1, (4000, 16)))


def test_the_least_scale_and_size_said_are_the_least_that_work():
    """Sides round to the nearest multiple of 8, so a scale a little under side / 8 px steps
    works: 40x30 at --scale 2 makes 80x64, yet 'use --scale 2.14 or more' was said."""
    import random

    from hires.sizes import scale_range, size_range, target_size

    def works(source, **given):
        try:
            target_size(source, **given)
        except JobError:
            return False
        return True

    rng = random.Random(14)
    for _ in range(400):
        source = (rng.randint(1, 3000), rng.randint(1, 3000))
        (least, most), size = scale_range(source), size_range(source)[0]
        if least <= most:
            assert works(source, scale=least)
            assert least == 1 or not works(source, scale=least - 0.01)
            assert works(source, scale=most)
        if size <= 32768:
            assert works(source, size=size) and not works(source, size=size - 8)


def test_an_input_too_narrow_for_any_scale_says_to_give_both_sides():
    from hires.sizes import target_size

    with pytest.raises(JobError, match="too narrow.*give --width and --height"):
        target_size((30000, 40), scale=2)


def test_a_print_too_small_or_too_narrow_says_what_dpi_or_print_works():
    from hires.sizes import print_pixels

    with pytest.raises(JobError, match="is 8x8 px, less than the 64 px.*at least 1524 dpi") as e:
        print_pixels("1x1mm", 300)
    assert min(print_pixels("1x1mm", _suggested_dpi(e.value))) >= 64
    with pytest.raises(JobError, match="1000 times longer than wide.*closer to square"):
        print_pixels("1x1000mm", 300)
    # Upscales: a panorama fitted into A4 (its short side under 64 px), a photo into a print
    # smaller than itself. The dpi named is the least that works.
    for source, text, words in [((20000, 40), "A4", "fitted to it 352x8, less than the 64 px"),
                                ((3000, 2000), "A6-landscape", "smaller than the input"),
                                ((67, 67), "2x3mm", "fitted to it 8x8")]:
        with pytest.raises(JobError, match=words) as e:
            print_pixels(text, 30, source)
        dpi = _suggested_dpi(e.value)
        w, h = print_pixels(text, dpi, source)
        assert 64 <= min(w, h) and w >= source[0] and h >= source[1]
        with pytest.raises(JobError):
            print_pixels(text, dpi - 1, source)
    with pytest.raises(JobError, match="less than the 64 px a side hires makes and smaller than "
                       "the input"):
        print_pixels("5x5mm", 300, (300, 200))  # both, and both named
    # What is made is the input fitted to the print (1x1 cm here), not the whole 400 cm: the
    # dpi that makes it no smaller than the input is named, past the print's own 208 dpi.
    with pytest.raises(JobError, match="fitted to it 8x8, less than the 64 px.*at least 2530"):
        print_pixels("400x1cm", 30, (1000, 1000))
    assert print_pixels("400x1cm", 2530, (1000, 1000)) == (1000, 1000)


def _suggested_dpi(error: Exception) -> int:
    import re

    return int(re.search(r"at least (\d+) dpi", str(error)).group(1))


def test_the_cli_names_the_scale_and_dpi_that_work(tmp_path):
    small = tmp_path / "small.png"
    Image.new("RGB", (60, 40), "gray").save(small)
    assert_usage_error(cli("up", str(small), "--scale", "1", "--model", "tiny", "--dry-run"),
                       "use --scale 1.5 or more")  # 88x64
    assert_usage_error(cli("gen", "x", "--print-size", "1x1mm", "--model", "tiny",
                           "--dry-run"), "at least 1524 dpi for that print (--dpi)")


@pytest.mark.parametrize("text", ["A4+3mm-landscape", "a4 +3mm landscape", "A4+3MM-Landscape"])
def test_a_turned_paper_takes_its_bleed_before_or_after_the_turn(text):
    """'A4+3mm-landscape' was refused: "bleed must look like +3mm ..., got '+3mm-landscape'"."""
    from hires.sizes import print_inches, print_pixels

    assert print_inches(text) == pytest.approx(print_inches("A4-landscape+3mm"))
    assert print_pixels(text, 300) == print_pixels("303x216mm", 300)
    made = cli("gen", "x", "--print-size", text, "--model", "tiny", "--dry-run")
    assert made.exit_code == 0, made.stderr


def test_a_size_of_the_wrong_kind_is_quoted_as_its_writer_wrote_it():
    """A file's `size = true` said "got True" (Python's word); a flag's value stays as given."""
    from hires.sizes import OPTIONS, check_size_keys

    with pytest.raises(JobError, match=r"^'size' must be a whole number of pixels, got true "
                                       r"\(in j.toml job 0\)$"):
        check_size_keys({"size": True}, "j.toml job 0")
    with pytest.raises(JobError, match=r"^'scale' must be a positive number, got \[2\] "
                                       r"\(in j.toml job 0\)$"):
        check_size_keys({"scale": [2]}, "j.toml job 0")
    with pytest.raises(JobError, match=r"^--size must be a whole number of pixels, got 'x'$"):
        check_size_keys({"size": "x"}, OPTIONS)


def test_the_widest_aspect_said_works_and_a_tenth_wider_does_not():
    """'at most 16:1' was said where 17:1 works, and '5.2:1' where 5.2:1 fails (its short side
    rounded as 56 px): found by QA. Every size hires takes, both orientations."""
    import re

    from hires.job import size_from

    def works(size: int, aspect: str) -> bool:
        try:
            size_from(size, aspect, None, None)
        except JobError:
            return False
        return True

    for size in range(64, 32769, 8):
        with pytest.raises(JobError) as caught:
            size_from(size, "1000:1", None, None)
        widest = re.search(r"at most ([\d.]+):1", str(caught.value)).group(1)
        wider = f"{float(widest) + 0.1:.1f}"
        assert works(size, f"{widest}:1") and works(size, f"1:{widest}"), size
        assert float(widest) == 1 or not works(size, f"{wider}:1"), size


def test_an_aspect_over_a_print_never_passes_the_paper():
    """The long side fitted, the short side rounded past the paper: A0 at 23:22 was 88.0 x
    84.2 cm on an 84.1 cm sheet (found by QA)."""
    from hires.sizes import print_pixels

    for paper, dpi in (("A0", None), ("24x36in", 600), ("A4", 97.3), ("60x90cm", 150)):
        pw, ph = print_pixels(paper, dpi)
        for a in range(1, 30, 2):
            for b in range(1, 30, 3):
                if max(a, b) > 12 * min(a, b):  # a short side under 64 px at small prints
                    continue
                w, h = layered_size(levels({"print_size": paper}, {"aspect": f"{a}:{b}"}),
                                    dpi=dpi)
                assert max(w, h) <= max(pw, ph) and min(w, h) <= min(pw, ph), (paper, a, b)
