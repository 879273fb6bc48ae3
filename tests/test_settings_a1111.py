"""A1111 text read by --from: a sampler hires lacks is read as its nearest and said in one
warning line; hires' own LinFusion field reads back to the setting."""

from helpers_cli import cli, error_lines, json_lines
from PIL import Image, PngImagePlugin

from hires.job import Job
from hires.output import parameters_text, parse_parameters, read_metadata

EULER_A = ("a fox\nSteps: 1, Sampler: Euler a, CFG scale: 5, Seed: 9, Size: 128x128, "
           "Model: tiny")


def a1111_png(path, text):
    """A PNG with an A1111 `parameters` chunk alone (no hires record)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (64, 64), "grey").save(path, pnginfo=info)
    return path


def test_euler_a_is_read_as_euler_and_said():
    from hires.output import a1111_notes

    assert (parse_parameters(EULER_A)["sampler"], parse_parameters(EULER_A)["karras"]) == (
        "euler", False)
    karras = EULER_A.replace("CFG", "Schedule type: Karras, CFG")
    assert parse_parameters(karras)["karras"] is True
    (note,) = a1111_notes(EULER_A)
    assert "'Euler a'" in note and "ancestral" in note and "read as euler" in note
    assert a1111_notes(EULER_A.replace("Euler a", "DPM++ 2M Karras")) == []


def test_gen_from_an_euler_a_image_warns_in_one_line(tmp_path, asked):
    image = a1111_png(tmp_path / "a1111.png", EULER_A)
    out = tmp_path / "again.png"
    result = cli("gen", "--from", str(image), "-o", str(out))
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert [w for w in warnings if "Euler a" in w] == [
        f"warning: --from {image}: A1111's sampler 'Euler a' is not in hires (it has no "
        "ancestral sampler): read as euler, so the image will differ (--sampler picks euler "
        "or dpmpp-2m)"]
    assert not error_lines(result.stderr)
    assert read_metadata(out)["hires"]["job"]["sampler"] == "euler"


def test_a_sampler_flag_leaves_the_a1111_samplers_note_unsaid(tmp_path):
    """`--from a1111.png --sampler dpmpp-2m` still said the Euler a image "will differ"."""
    image = a1111_png(tmp_path / "a1111.png", EULER_A)
    result = cli("plan", "--from", str(image), "--sampler", "dpmpp-2m")
    assert result.exit_code == 0, result.stderr
    assert "Euler a" not in result.stderr


def test_hires_linfusion_field_reads_back_to_its_setting(tmp_path, asked):
    job = {**Job(prompt="a fox", model="tiny", seed=3, steps=1).to_dict(), "linfusion": "none"}
    text = parameters_text(job, 128, 128)
    assert "LinFusion: none" in text and parse_parameters(text)["linfusion"] == "none"
    image = a1111_png(tmp_path / "stripped.png", text)  # a site kept the text, not the record
    out = tmp_path / "again.png"
    result = cli("gen", "--from", str(image), "-o", str(out))
    assert result.exit_code == 0, result.stderr
    assert read_metadata(out)["hires"]["job"]["linfusion"] == "none"


def test_an_a1111_checkpoint_name_is_said_and_sdxl_base_is_known(tmp_path, asked):
    """A1111 names a model by its checkpoint file's stem: 'sd_xl_base_1.0' was refused as no
    file here, and a fine-tune's name got the generic 'no such file' (QA 187)."""
    text = "a cat\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 42, Size: 512x512"
    assert parse_parameters(f"{text}, Model: sd_xl_base_1.0")["model"] == \
        "stabilityai/stable-diffusion-xl-base-1.0"
    tuned = a1111_png(tmp_path / "tuned.png", f"{text}, Model: juggernautXL_v9")
    refused = cli("gen", "--from", tuned, "--dry-run")
    assert refused.exit_code == 2
    why = ("its model is named as A1111 names one, by a checkpoint's name (juggernautXL_v9), "
           "which is no file or Hub id here; give --model with that checkpoint's .safetensors "
           "file or its Hub id")
    assert error_lines(refused.stderr) == [f"error: {tuned}: {why}"]
    given = cli("gen", "--from", tuned, "--model", "tiny", "--dry-run")
    assert given.exit_code == 0, given.stderr
    # info warns of it, as of any text --from refuses (QA 188)
    shown = cli("info", tuned)
    assert f"warning: {tuned}: `hires gen --from` refuses its parameters: {why}" in \
        shown.stderr.splitlines()


def test_info_of_a1111_text_without_a_size_says_from_makes_the_default(tmp_path, asked):
    """info said 'size 64x64 (the file's)' under 'as --from takes them', and --from made the
    default size (QA 187)."""
    bare = a1111_png(tmp_path / "bare.png", "a cat on a mat")
    shown = cli("info", bare)
    assert shown.exit_code == 0, shown.stderr
    assert "no size in them: --from makes hires' default size (the file is 64x64; --size " \
        "picks one)" in shown.stdout
    planned = cli("plan", "--from", bare, "--model", "tiny", "--json")
    assert planned.exit_code == 0, planned.stderr
    assert (json_lines(planned.stdout)[0]["width"], json_lines(planned.stdout)[0]["height"]) \
        != (64, 64)
    sized = a1111_png(tmp_path / "sized.png", EULER_A)
    assert "size 64x64 (the file's)" in cli("info", sized).stdout


def test_an_a1111_images_loras_are_said_not_applied(tmp_path):
    """`info` and `--from` said nothing of an A1111 image's LoRAs, which hires does not apply:
    the image differs as much as with a sampler it lacks (QA 206). --lora answers it."""
    from hires.output import a1111_notes

    text = ('a fox <lora:foo:0.8>\nSteps: 1, Sampler: Euler, CFG scale: 5, Seed: 9, Size: '
            '128x128, Model: tiny, Lora hashes: "foo: abc, bar: def"')
    (note,) = a1111_notes(text)
    assert note.startswith("A1111's LoRAs (foo, bar) are not applied")
    assert a1111_notes(text.replace(', Lora hashes: "foo: abc, bar: def"', "")) == [
        note.replace("foo, bar", "foo")]  # the prompt's tag alone
    image = a1111_png(tmp_path / "a.png", text)
    said = cli("plan", "--from", str(image))
    assert "warning: --from" in said.stderr and "LoRAs (foo, bar) are not applied" in said.stderr
    swapped = cli("plan", "--from", str(image), "--sampler", "dpmpp-2m")  # another answer
    assert "LoRAs (foo, bar)" in swapped.stderr
