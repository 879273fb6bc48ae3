"""What a plan that cannot fit offers instead: a size that does fit (planned as the run plans
it), a print's dpi for a job sized by a print, and a VAE tile chosen by its whole peak."""

import re

import pytest
from helpers_cli import cli, error_lines
from PIL import Image

import hires.plan as plan_module
from hires.plan import PlanError, largest_fitting

# a budget set too small is named after the fit: "; or a larger vram="
LARGER = r"(?:; or a larger \w+=)?$"
FITS = r"; \d+x\d+ fits \(width=\d+, height=\d+\)" + LARGER

CARD = ("--vram", "9", "--offload", "none", "--gpu", "h100", "--dry-run")


def _refusal(result) -> str:
    assert result.exit_code == 2, (result.stdout, result.stderr)
    (line,) = error_lines(result.stderr)
    return line


def test_the_size_offered_is_checked_with_the_rate_the_run_plans_with(monkeypatch):
    """Sizes are searched without a rate (fast), but a rate can change the VAE's tile and so
    the peak: 1336x1888 was offered for A2 on 9 GiB, and with the rate it did not fit."""
    def fake_plan(width, height, rate=None, **_):  # fits to 96 px unrated, to 80 px rated
        if max(width, height) > (96 if rate is None else 80):
            raise PlanError("too large")

    monkeypatch.setattr(plan_module, "make_plan", fake_plan)
    assert largest_fitting(200, 200, rate=1e15) == (80, 80)
    assert largest_fitting(200, 200, rate=None) == (96, 96)  # a rate-less request: as found


def test_an_upscale_takes_a_vae_tile_whose_whole_peak_fits(tmp_path):
    """A 1400x936 upscale on 9 GiB was refused ("needs at least 8.1 GiB ... (batched)") for
    every strategy: its 1024 px VAE tile fit the budget alone, but not with the cross-fade
    rows, where 768 px tiles fit; 1800x1200 fitted and 1400x936 did not."""
    photo = tmp_path / "in.png"
    Image.new("RGB", (1200, 800)).save(photo)
    for size in (1400, 1600, 1800):
        result = cli("up", photo, "--size", size, *CARD)
        assert result.exit_code == 0, (size, result.stderr)


@pytest.mark.parametrize("command", ["gen", "up", "batch"])
def test_a_print_that_does_not_fit_is_told_the_dpi_that_does(tmp_path, command):
    """`--print-size A2` on 9 GiB was told "1336x1888 fits": pixels, where a print's maker
    lowers the dpi (and 1336x1888 did not fit either). The dpi offered makes a size that fits."""
    photo = tmp_path / "in.png"
    Image.new("RGB", (1200, 800)).save(photo)
    if command == "batch":
        jobs = tmp_path / "j.jsonl"
        jobs.write_text('{"prompt": "x", "print_size": "A2", "vram": 9, "offload": "none"}\n')
        result = cli("batch", jobs, "-o", tmp_path / "out", "--gpu", "h100", "--dry-run")
        assert result.exit_code == 2, result.stderr
        found = re.search(r"; A2 fits at dpi = (\d+) \((\d+)x(\d+)\); try a larger vram",
                          result.stderr)
    else:
        given = ("gen", "x") if command == "gen" else ("up", photo)
        found = re.search(r"; A2 fits at --dpi (\d+) \((\d+)x(\d+)\); try a larger --vram",
                          _refusal(cli(*given, "--print-size", "A2", *CARD)))
    assert found, result.stderr if command == "batch" else None
    said = result.stderr if command == "batch" else found.string
    assert not re.search(r"; \d+x\d+ fits", said), said  # no pixels smaller than the print's
    dpi, width, height = (int(g) for g in found.groups())
    assert 1 <= dpi < 300
    given = ("gen", "x") if command != "up" else ("up", photo)
    planned = cli(*given, "--print-size", "A2", "--dpi", dpi, *CARD)
    assert planned.exit_code == 0, planned.stderr
    assert planned.stdout.startswith(f"{width}x{height} ("), planned.stdout


def test_a_size_given_in_pixels_is_told_pixels_alone(tmp_path):
    """The dpi is offered only where a print size made the sides: with --width/--height and
    --dpi, the dpi is what the file records, not what sizes the image."""
    line = _refusal(cli("gen", "x", "--width", "4960", "--height", "7016", "--dpi", "300",
                        *CARD))
    assert re.search(r"; \d+x\d+ fits \(--width \d+ --height \d+\); try a larger --vram",
                     line), line
    assert "at --dpi" not in line


@pytest.mark.parametrize("command", ["gen", "up", "batch"])
def test_the_size_that_fits_is_given_as_flags_that_plan_it(tmp_path, command):
    """'2768x1552 fits' for `--size 2776 --aspect 16:9`, whose `--size 2768` makes 2768x1560:
    the line named no flag, and its pixels were not what the flags make (QA 189, 190); an
    upscale to another shape than its input's was told --size, which kept the input's (QA
    191)."""
    photo = tmp_path / "in.png"
    Image.new("RGB", (1024, 768)).save(photo)
    asked = {"gen": [("gen", "x", "--aspect", "16:9", "--size", "2776"),
                     ("gen", "x", "--size", "20000")],
             "up": [("up", photo, "--width", "8000", "--height", "4000"),
                    ("up", photo, "--size", "8000")]}
    if command == "batch":
        jobs = tmp_path / "jobs.toml"
        jobs.write_text('[[job]]\nprompt = "x"\nsize = 2776\naspect = "16:9"\nvram = 9\n'
                        'offload = "none"\n')
        result = cli("batch", jobs, "-o", tmp_path / "out", "--gpu", "h100", "--dry-run")
        said = result.stdout + result.stderr
        assert re.search(r"fits \(width = \d+, height = \d+\); try a larger vram", said), said
        return
    for given, square in zip(asked[command], (False, True)):
        line = _refusal(cli(*given, *CARD))
        found = re.search(r"; (\d+)x(\d+) fits \(([^)]*)\)", line)
        assert found, line
        w, h = found[1], found[2]
        flags = found[3].split()
        assert flags == (["--size", str(max(int(w), int(h)))] if square else
                         ["--width", w, "--height", h]), line
        again = cli(*given[:2], *flags, *CARD)  # as the line says: it fits
        assert again.exit_code == 0, again.stderr
        assert again.stdout.startswith(f"{w}x{h}"), again.stdout


@pytest.mark.parametrize("call", ["generate", "upscale"])
def test_the_library_tells_a_print_the_dpi_that_fits_in_keywords(tiny, tmp_path, call):
    """hires.generate(print_size=...) was told width= and height= alone: a script that sized
    by print_size takes dpi=; the plan at that dpi fits."""
    import hires
    from hires.pipeline import plan_for

    photo = tmp_path / "in.png"
    Image.new("RGB", (300, 200)).save(photo)
    make = (lambda **kw: hires.generate("x", components=tiny, **kw)) if call == "generate" \
        else (lambda **kw: hires.upscale(photo, components=tiny, **kw))
    with pytest.raises(PlanError) as refused:
        make(print_size="10x15cm", vram=0.8, steps=1)
    found = re.search(r"; the print_size fits at dpi=(\d+) \((\d+)x(\d+)\)" + LARGER,
                      str(refused.value))
    assert found, str(refused.value)
    dpi, width, height = (int(g) for g in found.groups())
    job = refused.value.job
    assert job.extra == {"print_size": "10x15cm"} and job.dpi == 300
    from hires.library import print_size_overrides

    source = (300, 200) if call == "upscale" else None
    sized = print_size_overrides({"print_size": "10x15cm", "dpi": dpi}, source)
    assert (sized["width"], sized["height"]) == (width, height)
    plan = plan_for(job.merged(sized), tiny, source=source)  # it fits: no PlanError
    assert (plan.width, plan.height) == (width, height)
    # sized in pixels, with a dpi for the file: told pixels alone
    with pytest.raises(PlanError, match=r"fits \(width=\d+, height=\d+\)" + LARGER):
        hires.generate("x", components=tiny, width=1184, height=1776, dpi=300, vram=0.8,
                       steps=1)


def test_an_upscales_side_at_its_inputs_shape_is_what_size_makes():
    """'13808x10352 fits (--size 13808)' for an 800x600 input, where --size 13808 makes
    13808x10360: the advice rounded a tie apart from `hires up --size` (QA 192)."""
    from hires.job import JobError
    from hires.plan import at_shape
    from hires.sizes import target_size

    for source in ((800, 600), (1200, 900), (1400, 700), (513, 301)):
        for side in range(max(source), 32769, 8):
            try:
                made = target_size(source, size=side)
            except JobError:  # smaller than the input: refused, no advice gives it
                continue
            assert at_shape(source, side) == made, (source, side)


def test_a_batch_plans_a_refusal_once_for_the_jobs_that_share_it(tmp_path, monkeypatch):
    """24 jobs that differ only in prompt each searched again for the size and dpi that fit
    (34 s, where a plan that fits is made once): the refusal is kept as a plan is, apart for
    jobs asked for another way (a print size, pixels)."""
    import hires.cli_show as show

    calls = []
    real = show.fitted_plan

    def counted(make, job):
        calls.append(job.extra)
        return real(make, job)

    monkeypatch.setattr(show, "fitted_plan", counted)
    jobs = tmp_path / "j.jsonl"
    lines = [f'{{"prompt": "p{i}", "print_size": "A2", "vram": 9, "offload": "none"}}'
             for i in range(4)]
    lines.append('{"prompt": "q", "width": 4960, "height": 7016, "dpi": 300, "vram": 9, '
                 '"offload": "none"}')  # the same pixels and dpi, asked for in pixels
    jobs.write_text("\n".join(lines) + "\n")
    result = cli("batch", jobs, "-o", tmp_path / "out", "--gpu", "h100", "--dry-run")
    assert result.exit_code == 2, result.stderr
    said = [line for line in result.stderr.splitlines() if " cannot run: " in line]
    assert len(said) == 5 and len(set(s.split(": ", 2)[2] for s in said[:4])) == 1
    assert "A2 fits at dpi = " in said[0] and "A2 fits" not in said[4], said
    assert calls == [{"print_size": "A2"}, {}]


def test_a_print_that_fits_at_no_dpi_is_told_so_on_one_line(tmp_path):
    """A print too large even at 1 dpi was told pixels ("280x280 fits"), which --print-size
    cannot be given with; and a print size with a line break in it broke the line."""
    line = _refusal(cli("gen", "x", "--print-size", "3000x3000cm", "--dpi", "2",
                        "--vram", "7.5", "--offload", "none", "--gpu", "h100", "--dry-run"))
    assert re.search(r"; 3000x3000cm fits at no whole dpi: a smaller print \(\d+x\d+ px fits\); "
                     r"try a larger --vram", line), line
    line = _refusal(cli("gen", "x", "--print-size", " A2\n", *CARD))
    assert "; A2 fits at --dpi " in line, line


def test_the_library_forgets_a_print_when_the_next_call_sizes_in_pixels(tiny):
    """A Result's job made from a print size, run again at width= and height=, was told the
    old print's dpi ("the print_size fits at dpi=99 (80x120)")."""
    import hires

    made = hires.generate("x", components=tiny, print_size="2x3cm", dpi=100, steps=1)
    assert made.job.extra == {"print_size": "2x3cm"}
    with pytest.raises(PlanError, match=FITS) as e:
        hires.generate(made.job, components=tiny, width=1184, height=1776, vram=0.8, steps=1)
    assert e.value.job.extra == {}
    # Run again as it is, the job's dpi= alone would not resize it: told pixels too (the
    # print's dpi moved at each try).
    again = made.job.merged({"width": 1184, "height": 1768})
    with pytest.raises(PlanError, match=FITS):
        hires.generate(again, components=tiny, vram=0.8, steps=1)


def test_a_job_short_of_gpu_memory_is_told_the_budget_for_all_its_stages():
    """Only the first stage short of memory said its budget: 4096 px on 3 GiB was told 3.1,
    then (at 3.1) 3.2 for the next stage, and so on, a try for each stage."""
    args = ("plan", "a fox", "--size", "4096", "--gpu", "4090", "--ram", "64")
    said = _refusal(cli(*args, "--vram", "3"))
    found = re.search(r"a 3\.1 GiB budget, more than the 3\.0 GiB one, and the whole job a "
                      r"([\d.]+) GiB one \(a later stage needs more\)", said)
    assert found, said
    assert cli(*args, "--vram", found.group(1)).exit_code == 0
    assert cli(*args, "--vram", f"{float(found.group(1)) - 0.1:.1f}").exit_code == 2


@pytest.mark.parametrize("args, vram, whole", [
    # a later stage short only with the forced tile: said as a --vae-tile error, no budget
    (("plan", "a fox", "--size", "4096", "--gpu", "4090", "--ram", "64", "--vae-tile", "2048"),
     "3", "7.3"),
    # ten stages from a 16 px input: the search stopped at eight, and said nothing
    (("up", "{in16}", "--size", "16384", "--gpu", "4090", "--ram", "128", "--dry-run"),
     "1", "7.3"),
    # needs of 1.61 and 1.67 GiB: both said as 1.7, "and the whole job a 1.7 GiB one"
    (("gen", "a fox", "--model", "tiny", "--size", "2048", "--steps", "3", "--dry-run"),
     "1.6", None),
])
def test_the_whole_jobs_budget_is_said_past_a_tile_and_many_stages_and_only_as_news(
        tmp_path, args, vram, whole):
    Image.new("RGB", (16, 16), "gray").save(tmp_path / "in16.png")
    args = [str(tmp_path / "in16.png") if a == "{in16}" else a for a in args]
    said = _refusal(cli(*args, "--vram", vram))
    if whole is None:
        assert "whole job" not in said, said
        return
    assert f"and the whole job a {whole} GiB one (a later stage needs more)" in said, said
    assert cli(*args, "--vram", whole).exit_code == 0
