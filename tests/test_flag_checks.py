"""Flags that would be ignored, or read otherwise than meant, are refused at the shell."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers_cli import assert_usage_error, cli, error_lines


@pytest.mark.parametrize(("flag", "needs"), [("--control-scale", "--control-model"),
                                             ("--ip-scale", "--ip-image")])
@pytest.mark.parametrize("command", ["plan", "gen"])
def test_an_add_on_strength_without_its_add_on_is_refused(command, flag, needs):
    """It was ignored without a word: the image came out as if the flag were not there."""
    dry = ["--dry-run"] if command == "gen" else []
    result = cli(command, "a cat", "--model", "tiny", "--size", "256", flag, "0.5", *dry)
    assert_usage_error(result, flag, needs)


def test_a_presets_add_on_strength_alone_is_a_default(tmp_path):
    """A preset may set a strength for the runs that add the add-on; alone it passes."""
    folder = tmp_path / "presets"
    folder.mkdir()
    (folder / "soft.toml").write_text("control_scale = 0.4\nip_scale = 0.3\n")
    result = cli("plan", "a cat", "--model", "tiny", "--size", "256", "--preset", "soft",
                 env={"HIRES_PRESETS": str(folder)})
    assert result.exit_code == 0, result.stderr


def test_up_scales_its_input_as_control_without_control_flag(tmp_path):
    """`hires up` conditions on its input when --control is not given: the strength is used."""
    from PIL import Image

    image = tmp_path / "in.png"
    Image.new("RGB", (128, 128), "grey").save(image)
    result = cli("up", image, "--model", "tiny", "--scale", "2", "--control-model",
                 str(tmp_path / "missing-controlnet"), "--control-scale", "0.5", "--dry-run")
    assert_usage_error(result, "missing-controlnet")  # checked past the strength


def recorded_image(path, job: dict, result: dict | None = None) -> str:
    """An image whose hires record holds `job` (and `result`), as if hires had made it."""
    import json

    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("hires", json.dumps({"job": {"prompt": "a cat", "model": "tiny",
                                               "width": 256, "height": 256, **job},
                                       **({"result": result} if result else {})}))
    Image.new("RGB", (256, 256)).save(path, pnginfo=info)
    return str(path)


@pytest.mark.parametrize(("job", "what", "flag"), [
    ({"lora": ["styles/ink.safetensors:0.5"]}, "with the LoRA styles/ink.safetensors,",
     "lora"),
    ({"vae": "./vae/fixed.safetensors"}, "with the VAE ./vae/fixed.safetensors,", "--vae"),
    ({"control": "edges.png", "control_model": "diffusers/controlnet-canny-sdxl-1.0"},
     "with the control image edges.png,", "--control"),
    # a folder's name reads as a Hub id: the record says it was local
    ({"linfusion": "sub/linf"}, "with the LinFusion weights sub/linf,", "--linfusion")])
def test_from_says_a_recorded_relative_path_is_missing_here(tmp_path, monkeypatch, job, what,
                                                            flag):
    """A LoRA recorded as typed (relative) failed from another folder as `--lora X: no such
    file`, a flag the user never gave."""
    local = {"local": list(job)} if flag == "--linfusion" else None
    made = recorded_image(tmp_path / "made.png", job, local)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = cli("gen", "--from", made, "--dry-run")
    assert result.exit_code == 2
    # --lora replaces the recorded list: one --lora PATH would drop the others and the scale
    offer = ("give every LoRA from here with its scale (--lora PATH:SCALE each)"
             if flag == "lora" else f"give its path from here ({flag} PATH)")
    assert error_lines(result.stderr) == [
        f"error: {made} was made {what} a path relative to the folder hires ran in, and there "
        "is none here; run this command in that folder (if this is it, the file is gone), "
        f"or {offer}"]


def test_a_relative_linfusion_folder_is_recorded_as_local(tmp_path, monkeypatch, tiny_folder):
    """Read from another folder, sub/linf was taken for a Hub id not in the cache."""
    import shutil

    shutil.copytree(tiny_folder / "linfusion", tmp_path / "sub" / "linf")
    monkeypatch.chdir(tmp_path)
    made = cli("gen", "a cat", "--model", tiny_folder, "--linfusion", "sub/linf", "--size",
               "256", "--steps", "1", "-o", "a.png", "--json", "-q")
    assert made.exit_code == 0, made.stderr
    shown = cli("info", "a.png", "--json")
    assert json.loads(shown.stdout)["result"]["local"] == ["linfusion"]


def test_from_takes_recorded_hub_ids_and_paths_that_are_here(tmp_path, monkeypatch):
    made = recorded_image(tmp_path / "made.png", {"lora": ["owner/ink-lora:0.5"]})
    assert "a path relative" not in cli("gen", "--from", made, "--dry-run").stderr
    (tmp_path / "styles").mkdir()
    (tmp_path / "styles" / "ink.safetensors").write_bytes(b"not a lora")
    made = recorded_image(tmp_path / "made.png", {"lora": ["styles/ink.safetensors"]})
    monkeypatch.chdir(tmp_path)
    result = cli("gen", "--from", made, "--dry-run")
    assert result.exit_code == 2
    assert "not a readable safetensors file" in result.stderr  # found, and checked past it
    assert "a path relative" not in cli("gen", "--from", made, "--dry-run", "--lora",
                                        "owner/other:0.5").stderr


@pytest.mark.parametrize(("template", "name"), [("{seed:06d}.png", "000042.png"),
                                                ("{index:03}_{prompt:.5}.png", "007_a-red.png"),
                                                ("{{x}}_{seed}.png", "{x}_42.png")])
def test_an_output_template_field_may_carry_a_format(template, name):
    from hires.output import output_path

    assert output_path(template, width=64, height=64, seed=42, fmt="png", index=7,
                       prompt="a red cat").name == name


@pytest.mark.parametrize(("template", "why"), [
    ("{seed.real}.png", "unknown field {seed.real}"),  # str.format read attributes
    ("{prompt[0]}.png", "unknown field {prompt[0]}"),  # ... and items
    ("{seed!r}.png", "{seed!r} has a conversion (!r, !s, !a), which names do not take"),
    # a gigabyte-long name; each said as what is wrong with it, not 'is not a field' (QA 209)
    ("{seed:999999999}.png", "{seed:999999999} asks for a width or precision of 1000 or more"),
    ("{seed:0>2000}.png", "{seed:0>2000} asks for a width or precision of 1000 or more: at "
                          "most 999"),
    ("{sead}.png", "did you mean {seed}?"),
    ("{seed:zz}.png", "{seed:zz} has 'zz', not a format Python writes"),
    ("{seed:{width}}.png", "{seed:{width}} nests a field in its format"),
    ("{prompt:/>12}.png", "{prompt:/>12} fills with '/', a path separator, which would make "
                          "folders of the name")])  # made //a-cat.png, at the root
def test_an_output_template_reads_only_its_fields(tmp_path, template, why):
    result = cli("gen", "a cat", "--model", "tiny", "--size", "256", "--dry-run", "-o",
                 str(tmp_path / template))
    assert_usage_error(result, why, "fields: {seed}")


@pytest.mark.parametrize(("args", "flag"), [
    (("gen", "a cat", "--model", ""), "--model"),  # read as no choice: the 7 GB default model
    (("gen", "a cat", "--model", "tiny", "--vae", " "), "--vae"),
    (("gen", "a cat", "--model", "tiny", "--linfusion", ""), "--linfusion"),
    (("gen", "a cat", "--model", "tiny", "--control", ""), "--control"),
    (("gen", "a cat", "--model", "tiny", "--ip-image", ""), "--ip-image"),
    (("gen", "a cat", "--model", "tiny", "-o", ""), "-o"),  # wrote into the working folder
    (("batch", "JOBS", "-o", ""), "-o"),
    (("batch", "JOBS", "--manifest", ""), "--manifest"),
    (("batch", "JOBS", "--shard", ""), "--shard"),  # ran every job, as no shard
    (("batch", "JOBS", "--model", ""), "--model")])  # planned the default model
def test_an_empty_value_an_unset_variable_gave_is_refused(tmp_path, args, flag):
    jobs = tmp_path / "jobs.toml"
    jobs.write_text('[[job]]\nprompt = "a"\nmodel = "tiny"\nwidth = 64\nheight = 64\n')
    args = [str(jobs) if a == "JOBS" else a for a in args]
    result = cli(*args, "--size" if args[0] == "gen" else "--dry-run",
                 *(["256", "--dry-run"] if args[0] == "gen" else []))
    assert_usage_error(result, f"{flag} is empty (an unset variable?)")


def test_an_empty_reference_in_a_job_file_names_its_key(tmp_path):
    jobs = tmp_path / "jobs.toml"
    jobs.write_text('[[job]]\nprompt = "a"\nmodel = "tiny"\ncontrol_model = ""\n')
    result = cli("batch", str(jobs), "--dry-run")
    assert_usage_error(result, "'control_model' in jobs.toml job 0 is empty")


@pytest.mark.parametrize(("key", "says"), [
    ("n = 3", "--n is a command's flag, not a key: a batch makes one image a job: give a job"),
    ("overwrite = true", "--overwrite is a command's flag, not a key: pass --overwrite to hires "
                         "batch"),
    ('shard = "0/2"', "--shard is a command's flag, not a key: pass --shard I/N to hires batch"),
    ("N = 2", "--n is a command's flag")])  # 'did you mean sampler', or every key listed
def test_a_commands_flag_written_as_a_key_says_so(tmp_path, key, says):
    """'n' got the list of 46 valid keys and no word that --n is a flag."""
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(f'[[job]]\nprompt = "a"\nmodel = "tiny"\n{key}\n')
    result = cli("batch", str(jobs), "--dry-run")
    assert_usage_error(result, says)
    assert "valid keys" not in result.stderr


def test_a_lora_key_of_the_wrong_kind_says_text_is_fine_too(tmp_path):
    """It said 'must be a list of text', though one text is taken."""
    jobs = tmp_path / "jobs.toml"
    jobs.write_text('[[job]]\nprompt = "a"\nlora = 5\n')
    assert_usage_error(cli("batch", str(jobs), "--dry-run"),
                       "'lora' in jobs.toml job 0 must be text or a list of text, got 5")


@pytest.mark.parametrize(("args", "says"), [
    (("gen", "a cat", "--n", "3"), "{index} or {seed} (-o 'DIR/x_{index}.png')"),
    (("up", "IN", "IN2", "--scale", "2"), "{name} or {index} (-o 'DIR/x_{name}.png')")])
def test_several_images_to_one_file_name_the_fields_that_tell_them_apart(tmp_path, args, says):
    """--n 3 -o x.png suggested {name}, which is the same for all three."""
    from PIL import Image

    for name in ("a.png", "b.png"):
        Image.new("RGB", (64, 64)).save(tmp_path / name)
    args = [{"IN": str(tmp_path / "a.png"), "IN2": str(tmp_path / "b.png")}.get(a, a)
            for a in args]
    result = cli(*args, "--model", "tiny", "--dry-run", "-o", str(tmp_path / "x.png"))
    assert_usage_error(result, says.replace("DIR", str(tmp_path)))


def test_the_template_suggested_for_several_images_is_one_hires_takes(tmp_path):
    """-o 'a}.png' --n 2 suggested -o 'a}_{index}.png', which is a bad template ("Single '}'
    encountered"); its '}' is doubled now, and the suggestion runs."""
    result = cli("gen", "x", "--model", "tiny", "--n", "2", "--dry-run", "-o", "a}.png")
    assert_usage_error(result, "(-o 'a}}_{index}.png')")
    result = cli("gen", "x", "--model", "tiny", "--size", "64", "--n", "2", "--dry-run",
                 "--json", "-o", str(tmp_path / "a}}_{index}.png"))
    assert result.exit_code == 0, result.stderr
    images = json.loads(result.stdout.splitlines()[0])["images"]
    assert [Path(i["path"]).name for i in images] == ["a}_0.png", "a}_1.png"]


@pytest.mark.parametrize("command", ["gen", "batch"])
def test_an_output_name_with_a_line_break_is_refused(tmp_path, command):
    """stdout lists one path a line: -o "$(printf 'a\nb.png')" printed 'a' and 'b.png', two
    names that are not there, and exit 0."""
    name = "a\nb.png"
    if command == "gen":
        result = cli("gen", "x", "--model", "tiny", "--size", "64", "-o", tmp_path / name)
        said = "choose another -o"
    else:
        jobs = tmp_path / "jobs.jsonl"
        jobs.write_text(json.dumps({"prompt": "x", "model": "tiny", "size": 64,
                                    "output": name}) + "\n", encoding="utf-8")
        result = cli("batch", jobs, "-o", tmp_path / "out")
        said = "jobs.jsonl job 0 (line 1): output name 'a\\nb.png' holds a line break"
    assert result.exit_code == 2 and said in result.stderr, result.stderr
    assert "line break" in result.stderr and not list(tmp_path.rglob("*.png"))


def test_a_record_says_which_references_were_local(tmp_path, monkeypatch):
    from hires.job import Job
    from hires.record import local_refs

    (tmp_path / "sub" / "model").mkdir(parents=True)
    (tmp_path / "vae.safetensors").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    job = Job(model="sub/model", vae="vae.safetensors", control_model="owner/controlnet")
    assert local_refs(job) == ["model", "vae"]
    assert local_refs(Job(model=str(tmp_path / "sub" / "model"))) == []  # read from anywhere


def test_from_says_a_local_model_named_like_a_hub_id_is_missing_here(tmp_path, monkeypatch):
    """`--model sub/tiny` (a folder) re-run from another folder was taken for the Hub id
    sub/tiny: offline "not in the local cache", online another model fetched."""
    made = recorded_image(tmp_path / "made.png", {"model": "sub/tiny"}, {"local": ["model"]})
    monkeypatch.chdir(tmp_path.parent)
    result = cli("gen", "--from", made, "--dry-run")
    assert result.exit_code == 2
    assert error_lines(result.stderr) == [
        f"error: {made} was made with the model sub/tiny, a path relative to the folder hires "
        "ran in, and there is none here; run this command in that folder (if this is it, "
        "the file is gone), or give its path from here (--model PATH)"]


@pytest.fixture
def addon_preset(tmp_path):
    from PIL import Image

    folder = tmp_path / "presets"
    folder.mkdir()
    for name in ("edges.png", "style.png"):  # plan reads the add-ons' images too
        Image.new("RGB", (64, 64)).save(tmp_path / name)
    (folder / "cn.toml").write_text(
        f'control = "{tmp_path / "edges.png"}"\ncontrol_model = "owner/controlnet"\n'
        f'control_scale = 0.4\nip_image = "{tmp_path / "style.png"}"\n'
        'lora = ["owner/ink:0.5"]\n')
    return {"HIRES_PRESETS": str(folder)}


@pytest.mark.parametrize(("flags", "left"), [
    (("--control", "none"), "lora owner/ink:0.5, ip-adapter h94/IP-Adapter"),
    (("--control-model", "none", "--ip-image", "none"), "lora owner/ink:0.5"),
    (("--control", "none", "--ip-image", "none", "--lora", "none"), "model tiny")])
def test_none_drops_an_add_on_a_preset_brings(addon_preset, flags, left):
    """Flags override a preset, but nothing could switch its ControlNet off ('' is refused)."""
    result = cli("plan", "a cat", "--model", "tiny", "--size", "256", "--preset", "cn", "--json",
                 *flags, env=addon_preset)
    assert result.exit_code == 0, result.stderr
    import json

    job = json.loads(result.stdout)["job"]
    dropped = {"--control": "control_model", "--control-model": "control_model",
               "--ip-image": "ip_image", "--lora": "lora"}
    for flag in flags[::2]:
        assert not job[dropped[flag]], job
    settings = cli("plan", "a cat", "--model", "tiny", "--size", "256", "--preset", "cn",
                   *flags, env=addon_preset).stdout.splitlines()[1]
    assert settings.endswith(left)


def test_a_strength_for_an_add_on_switched_off_is_refused(addon_preset):
    result = cli("plan", "a cat", "--model", "tiny", "--size", "256", "--preset", "cn",
                 "--control", "none", "--control-scale", "0.3", env=addon_preset)
    assert_usage_error(result, "--control-scale has nothing to scale")


def test_from_with_none_drops_the_recorded_add_on(tmp_path):
    made = recorded_image(tmp_path / "made.png", {
        "control": "gone.png", "control_model": "owner/controlnet", "lora": ["gone.safetensors"]})
    result = cli("gen", "--from", made, "--control", "none", "--lora", "none", "--dry-run")
    assert result.exit_code == 0, result.stderr  # the missing files went with their add-ons


def test_an_empty_output_in_a_job_file_is_refused(tmp_path):
    """It ran under the batch's default name, as if the key were not there."""
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"prompt": "a", "model": "tiny", "output": ""}\n')
    assert_usage_error(cli("batch", str(jobs), "--dry-run"),
                       "'output' in jobs.jsonl job 0 (line 1) is empty")


def test_lora_none_beside_other_loras_keeps_them_and_drops_the_presets(addon_preset):
    """It was read as a LoRA file named 'none'."""
    import json

    result = cli("plan", "a cat", "--model", "tiny", "--size", "256", "--preset", "cn", "--json",
                 "--lora", "none", "--lora", "owner/mine:0.3", env=addon_preset)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["job"]["lora"] == ["owner/mine:0.3"]


@pytest.mark.parametrize(("args", "says"), [
    (("--control", "none", "--control-model", "owner/net"),
     "--control none drops the ControlNet: leave out --control-model, or give --control a"),
    (("--ip-adapter", "none", "--ip-image", "IMG"), "--ip-adapter none drops the IP-Adapter")])
def test_none_beside_its_add_ons_other_reference_is_refused(tmp_path, args, says):
    """`up --control none --control-model X` ran the ControlNet on the input image."""
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "in.png")
    args = [str(tmp_path / "in.png") if a == "IMG" else a for a in args]
    result = cli("up", str(tmp_path / "in.png"), "--model", "tiny", "--scale", "2", *args,
                 "--dry-run")
    assert_usage_error(result, says)


def test_a_batch_job_drops_its_defaults_add_ons_with_none(tmp_path):
    from hires.batch import read_batch

    jobs = tmp_path / "jobs.toml"
    jobs.write_text('[defaults]\ncontrol = "e.png"\ncontrol_model = "owner/net"\n'
                    'lora = ["owner/ink"]\n[[job]]\nprompt = "a"\ncontrol = "none"\n'
                    'lora = "none"\n[[job]]\nprompt = "b"\n')
    plain, kept = (item.job for item in read_batch(jobs))
    assert (plain.control, plain.control_model, plain.lora) == (None, None, [])
    assert (kept.control, kept.control_model, kept.lora) == ("e.png", "owner/net", ["owner/ink"])
    jobs.write_text('[[job]]\nprompt = "a"\ncontrol = "none"\ncontrol_model = "owner/net"\n')
    with pytest.raises(Exception, match="'control_model' in jobs.toml job 0 is given with "
                                        "control = 'none'"):
        read_batch(jobs)


def test_a_preset_that_a_recorded_job_replaces_says_so(tmp_path):
    """`--from made.png --preset draft` planned the recorded job as if no preset were given:
    the record holds every key, and a recorded job comes after a preset."""
    made = recorded_image(tmp_path / "made.png", {"steps": 30, "guidance": 7.5})
    preset = tmp_path / "p.toml"
    preset.write_text("size = 2048\nsteps = 12\nguidance = 6.0\nseed = 4\n", encoding="utf-8")
    result = cli("gen", "--from", made, "--preset", preset, "--steps", "3", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert "warning: --preset p: its size, guidance give way to --from" in result.stderr
    quiet = cli("gen", "--from", made, "--preset", preset, "--steps", "3", "--size", "512",
                "--guidance", "5", "--dry-run")  # every key it has that the record has: flags
    assert quiet.exit_code == 0 and "--preset" not in quiet.stderr, quiet.stderr


@pytest.mark.parametrize(("preset", "flags", "hidden"), [
    ({"size": 4096, "steps": 3}, {"aspect": 2.0}, ["size", "steps"]),  # long side: the record's
    ({"aspect": "16:9", "steps": 3}, {"size": 256}, ["aspect", "steps"]),  # shape: the record's
    ({"aspect": "16:9", "size": 4096}, {"size": 256, "aspect": 1.0}, []),  # all from flags
    ({"size": 4096}, {}, ["size"])])
def test_a_size_flag_hides_only_its_own_part_of_a_presets_size(preset, flags, hidden):
    """`--preset 4k --aspect 2` over a record warned of no size, while the record's long
    side replaced the preset's 4096: one size flag alone takes the rest from below."""
    from hires.cli_jobs import hidden_by_record

    recorded = {"prompt": "a", "width": 256, "height": 256, "steps": 30}
    assert hidden_by_record(preset, recorded, flags) == hidden


def test_info_names_the_vae_an_image_was_made_with(tmp_path):
    made = recorded_image(tmp_path / "v.png", {"vae": "madebyollin/sdxl-vae-fp16-fix"})
    shown = cli("info", made)
    assert shown.exit_code == 0, shown.stderr
    assert "linfusion" in shown.stdout and ", vae madebyollin/sdxl-vae-fp16-fix" in shown.stdout


@pytest.mark.parametrize("flags, said", [
    (["--size", "1024.0"], "'1024.0' is not a whole number (write it without a decimal point"),
    (["--size", "1e3"], "'1e3' is not a whole number (write it without a decimal point"),
    (["--size", "4k"], "'4k' is not a whole number; give the pixels, e.g. 4096"),
    (["--seed", "7.0"], "'7.0' is not a whole number"),
    (["--n", "2.0"], "'2.0' is not a whole number"),
    (["--n", "0"], "0 is not in the range 1 to 10000"),
    (["--quality", "101", "-o", "x.jpg"], "101 is not in the range 1 to 100"),
    (["--width", "512.0", "--height", "256"], "'512.0' is not a whole number"),
])
def test_whole_number_flags_refuse_decimals_as_job_files_do(flags, said):
    """--size 1024.0 ran (a job file's 1024.0 is refused) and --size 1e3 said pydantic's
    'Input should be a valid integer'."""
    assert_usage_error(cli("gen", "a", "--model", "tiny", *flags, "--dry-run"), said)
    assert cli("gen", "a", "--model", "tiny", "--size", " 256", "--seed", "+7", "--n", "2",
               "--dry-run").exit_code == 0


def test_a_dry_run_says_what_the_run_warns_of_before_it(tmp_path, small):
    """A WebP's dpi, a JPEG's transparency and a TMPDIR that is no folder were said by the
    run alone: the dry run that 'checks the outputs as a run would' was silent."""
    webp = cli("gen", "a", "--model", "tiny", "--size", "256", "--dpi", "300", "-o",
               tmp_path / "t.webp", "--dry-run")
    assert webp.exit_code == 0, webp.stderr
    assert "warning: WebP files record no resolution: t.webp keeps no dpi" in webp.stderr
    planned = cli("gen", "a", "--model", "tiny", "--size", "256", "--dpi", "300", "-o",
                  tmp_path / "t.webp", "--dry-run", "--json")  # and in its JSON, per image
    (image,) = json.loads(planned.stdout)["images"]
    assert image["warnings"] == ["WebP files record no resolution: t.webp keeps no dpi; use "
                                 "png, tiff or jpg for print"]
    from PIL import Image

    clear = tmp_path / "clear.png"
    Image.new("RGBA", (96, 64), (9, 9, 9, 0)).save(clear)
    jpeg = cli("up", clear, "--model", "tiny", "--scale", "2", "-o", tmp_path / "c.jpg",
               "--dry-run")
    assert jpeg.exit_code == 0, jpeg.stderr
    assert "warning: JPEG holds no transparency: c.jpg is flattened on white" in jpeg.stderr
    piped = cli("up", clear, "--model", "tiny", "--scale", "2", "-o", "-", "--format", "jpg",
                "--dry-run")  # the image -o - writes is named so, not by its temporary file
    assert "JPEG holds no transparency: the image on stdout is flattened" in piped.stderr
    gone = tmp_path / "gone"
    tmp = cli("gen", "a", "--model", "tiny", "--size", "256", "-o", tmp_path / "t.png",
              "--dry-run", env={"TMPDIR": str(gone)})
    assert tmp.exit_code == 0 and f"TMPDIR={gone} is not a folder" in tmp.stderr


@pytest.mark.parametrize("text", ["", "\n# nothing yet\n", 'description = "mine"\n'])
def test_a_preset_that_sets_nothing_is_refused(tmp_path, text):
    """An empty preset file (saved empty by mistake) ran the defaults, 1024 px at 50 steps,
    without a word (QA 198)."""
    preset = tmp_path / "blank.toml"
    preset.write_text(text)
    assert_usage_error(cli("plan", "--preset", preset, "--gpu", "h100"),
                       f"error: preset 'blank' ({preset}) sets nothing "
                       f"{'but its description' if 'desc' in text else '(an empty file?)'}: "
                       "give it settings (steps = 30, say)")


def test_the_cpu_notes_name_a_preset_s_or_a_record_s_dtype_where_it_was_given(tmp_path):
    """A preset's dtype = "fp16" on the CPU was told "drop --dtype there", a flag never given;
    --from that image said it again of the record's (QA 197)."""
    preset = tmp_path / "cpu.toml"
    preset.write_text('dtype = "fp16"\noffload = "model"\n')
    made = tmp_path / "a.png"
    first = cli("gen", "a", "--preset", preset, "--model", "tiny", "--size", "64", "--steps", "1",
                "--device", "cpu", "-o", made)
    assert first.exit_code == 0, first.stderr
    assert (f"warning: dtype = \"fp16\" in preset 'cpu' ({preset}) is about 4x slower than fp32 "
            "on the CPU; --dtype auto runs fp32") in first.stderr.splitlines()
    assert "--offload" not in first.stderr and "drop --dtype" not in first.stderr
    again = cli("gen", "--from", made, "--device", "cpu", "-o", tmp_path / "b.png")
    assert f'warning: offload = "model" in metadata of {made} does nothing' in again.stderr
    flagged = cli("gen", "a", "--dtype", "fp16", "--model", "tiny", "--size", "64", "--steps",
                  "1", "--device", "cpu", "-o", tmp_path / "c.png")
    assert "warning: --dtype fp16 on the CPU is about 4x slower" in flagged.stderr
