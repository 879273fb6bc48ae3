"""Add-ons end to end (tiny model, offline): LoRA, ControlNet, IP-Adapter and the DPM++ 2M
sampler each change the image, repeat exactly, and round-trip through metadata and --from."""

import json

import numpy as np
import pytest
import torch
from helpers_cli import assert_usage_error, cli, error_lines, json_lines, write
from PIL import Image

TINY = ("--model", "tiny", "--size", "512", "--steps", "2", "--seed", "5", "-q")


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny):
    """A LoRA, a ControlNet folder, an IP-Adapter folder and two small photos, made offline."""
    from helpers_control import tiny_controlnet
    from helpers_ip import write_tiny_ip_adapter
    from helpers_lora import write_tiny_lora
    from skimage import data

    root = tmp_path_factory.mktemp("addons")
    lora = write_tiny_lora(root / "style.safetensors", tiny.pipe)
    tiny_controlnet(tiny.unet).save_pretrained(root / "control-net")
    write_tiny_ip_adapter(root / "ip", tiny.pipe)
    Image.fromarray(data.astronaut()).resize((96, 96), Image.LANCZOS).save(root / "edges.png")
    Image.fromarray(data.coffee()).resize((96, 64), Image.LANCZOS).save(root / "style.png")
    return {"lora": lora, "control_model": root / "control-net", "ip": root / "ip",
            "control": root / "edges.png", "ip_image": root / "style.png", "root": root}


def addon_flags(name: str, files: dict) -> list[str]:
    return {
        "lora": ["--lora", f"{files['lora']}:0.8"],
        "controlnet": ["--control", str(files["control"]),
                       "--control-model", str(files["control_model"]), "--control-scale", "0.7"],
        "ip-adapter": ["--ip-image", str(files["ip_image"]), "--ip-adapter", str(files["ip"]),
                       "--ip-scale", "0.9"],
        # With 2 steps DPM++ 2M is Euler (first order, then the step onto sigma 0).
        "sampler": ["--sampler", "dpmpp-2m", "--karras", "--steps", "6"],
    }[name]


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)


@pytest.fixture(scope="module")
def plain(tmp_path_factory, tiny):
    from helpers_cli import use_cached_tiny

    mp = pytest.MonkeyPatch()
    use_cached_tiny(mp, tiny)
    out = tmp_path_factory.mktemp("plain") / "plain.png"
    result = cli("gen", "a lighthouse", *TINY, "-o", out)
    mp.undo()
    assert result.exit_code == 0, result.stderr
    return pixels(out)


@pytest.mark.parametrize("name", ["lora", "controlnet", "ip-adapter", "sampler"])
def test_an_addon_changes_the_image_and_reruns_exactly_from_metadata(name, files, plain,
                                                                       tmp_path, asked, tiny):
    before = {k: v.clone() for k, v in tiny.unet.state_dict().items()}
    first, again = tmp_path / "first.png", tmp_path / "again.png"
    made = cli("gen", "a lighthouse", *TINY, *addon_flags(name, files), "-o", first, "--json")
    assert made.exit_code == 0, made.stderr
    record = json_lines(made.stdout)[0]
    image = pixels(first)
    if name != "sampler":  # (6 steps against 2 would differ anyway)
        assert np.abs(image - plain).mean() > 0.5  # the add-on changed the picture
    rerun = cli("gen", "--from", first, "-o", again, "-q")
    assert rerun.exit_code == 0, rerun.stderr
    assert np.array_equal(pixels(again), image)  # same job, same pixels
    # What ran is said in --json and by `hires info IMAGE`; the model is left as it was.
    shown = cli("info", first)
    assert shown.exit_code == 0, shown.stderr
    if name == "sampler":
        assert record["sampler"] == "dpmpp-2m karras" and record["addons"] == {}
        assert "dpmpp-2m karras" in shown.stdout
    else:
        key = name.replace("-", "_")
        assert list(record["addons"]) == [key]
        assert name in shown.stdout
    after = tiny.unet.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_addon_records_name_their_files(files, tmp_path, asked):
    out = tmp_path / "all.png"
    made = cli("gen", "a lighthouse", *TINY, *addon_flags("lora", files),
               *addon_flags("controlnet", files), *addon_flags("ip-adapter", files), "-o", out,
               "--json")
    assert made.exit_code == 0, made.stderr
    addons = json_lines(made.stdout)[0]["addons"]
    assert addons["lora"][0]["scale"] == 0.8 and len(addons["lora"][0]["sha256"]) == 64
    assert addons["controlnet"]["scale"] == 0.7
    assert addons["controlnet"]["image"] == str(files["control"])
    assert addons["ip_adapter"]["scale"] == 0.9
    shown = cli("info", out, "--json")
    assert json.loads(shown.stdout)["result"]["addons"] == addons


def test_a_lora_at_scale_zero_gives_the_same_pixels_as_none(files, tiny):
    from hires import generate

    common = dict(prompt="a lighthouse", width=256, height=256, steps=2, seed=3)
    none = generate(components=tiny, **common).image
    zero = generate(components=tiny, lora=[f"{files['lora']}:0"], **common).image
    assert np.array_equal(np.asarray(none), np.asarray(zero))


def test_up_feeds_its_input_to_a_controlnet_without_control(files, tmp_path, asked):
    out = tmp_path / "up.png"
    made = cli("up", files["control"], "--scale", "2", "--model", "tiny", "--steps", "2",
               "--seed", "1", "--control-model", files["control_model"], "-o", out, "--json",
               "-q")
    assert made.exit_code == 0, made.stderr
    control = json_lines(made.stdout)[0]["addons"]["controlnet"]
    assert control["image"] == str(files["control"])
    assert Image.open(out).size == (192, 192)


def test_batch_jobs_and_presets_take_addons(files, tmp_path, asked):
    preset = write(tmp_path / "fast.toml", 'sampler = "dpmpp-2m"\nsteps = 2\n')
    jobs = write(tmp_path / "jobs.toml", f"""
[defaults]
model = "tiny"
size = 256
preset = "{preset}"

[[job]]
prompt = "a lighthouse"
seed = 1
lora = ["{files['lora']}:0.5"]
""")
    made = cli("batch", jobs, "-o", tmp_path / "out", "-q")
    assert made.exit_code == 0, made.stderr
    manifest = [json.loads(line) for line in
                (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert manifest[-1]["sampler"] == "dpmpp-2m"
    assert manifest[-1]["addons"]["lora"][0]["scale"] == 0.5


def test_a_batch_dry_run_says_what_the_run_will_warn_of_a_control_image(files, tmp_path):
    """A transparent control image, and one mostly cropped away at the job's aspect: the run
    warns of both and gen's dry run said them, a batch's dry run did not."""
    clear = tmp_path / "clear.png"
    Image.new("RGBA", (96, 96), (200, 10, 10, 90)).save(clear)
    jobs = write(tmp_path / "jobs.toml", f"""
[defaults]
model = "tiny"
width = 512
height = 256
control_model = "{files['control_model']}"

[[job]]
prompt = "a lighthouse"
control = "{clear}"
""")
    plain = cli("batch", jobs, "-o", tmp_path / "out", "--dry-run")
    assert plain.exit_code == 0, plain.stderr
    # by the job file's key, not a flag it has none of
    said = [line for line in plain.stderr.splitlines()
            if line.startswith("warning: 'control' in jobs.toml job 0: ")]
    assert len(said) == 2 and "has transparency" in said[0], plain.stderr
    assert "(96x96) is scaled to cover the 512x256 image" in said[1]
    row = json_lines(cli("batch", jobs, "-o", tmp_path / "out", "--dry-run", "--json").stdout)[0]
    assert row["warnings"] == [line.removeprefix("warning: ") for line in said]


@pytest.mark.parametrize("key, needs", [("control_model", "--control IMAGE"),
                                        ("ip_adapter", "--ip-image IMAGE")])
def test_a_preset_may_name_an_addon_model_and_leave_its_image_to_the_flags(key, needs, files,
                                                                         tmp_path, asked):
    model = files["control_model"] if key == "control_model" else files["ip"]
    preset = write(tmp_path / "style.toml", f'{key} = "{model}"\nsteps = 2\n')
    image = ("--control", files["control"]) if key == "control_model" else (
        "--ip-image", files["ip_image"])
    made = cli("gen", "a lighthouse", "--model", "tiny", "--size", "256", "--preset", preset,
               *image, "-o", tmp_path / "a.png", "--json", "-q")
    assert made.exit_code == 0, made.stderr
    assert list(json_lines(made.stdout)[0]["addons"]) == [key.replace("_model", "net")]
    # Without the image: the preset's key, and the flag that gives what it needs
    alone = cli("gen", "a", "--model", "tiny", "--preset", preset, "--dry-run")
    flag = "--" + key.replace("_", "-")
    assert_usage_error(alone, f"'{key}' in preset 'style'", f"needs {needs}",
                       f"or {flag} none goes without it")
    # ... and the way out it names works
    without = cli("gen", "a", "--model", "tiny", "--size", "256", "--preset", preset, flag,
                  "none", "--dry-run")
    assert without.exit_code == 0, without.stderr


def test_plan_takes_a_presets_controlnet_without_its_image(files, tmp_path, asked):
    preset = write(tmp_path / "canny.toml", f'control_model = "{files["control_model"]}"\n')
    # (the tiny model's: SDXL's configs are known uncached, and refuse a tiny ControlNet)
    planned = cli("plan", "--preset", preset, "--size", "2048", "--json", "--model", "tiny")
    assert planned.exit_code == 0, planned.stderr
    plain = cli("plan", "--size", "2048", "--json", "--model", "tiny")
    hint = "the ControlNet's image does not change the plan; gen needs it (--control IMAGE)"
    plan, other = json_lines(planned.stdout)[0], json_lines(plain.stdout)[0]
    assert hint in plan["hints"] and hint in planned.stderr and hint not in other["hints"]
    assert plan["peak_bytes"] > other["peak_bytes"]  # its ControlNet is counted
    # What does change the plan is still asked for: the ControlNet for an image
    assert_usage_error(cli("plan", "--control", files["control"], "--size", "2048"),
                       "--control needs --control-model")
    # An IP-Adapter's image does not (an IP-Adapter-only preset was refused)
    ip = cli("plan", "--ip-adapter", files["ip"], "--size", "2048", "--json", "--model", "tiny")
    assert ip.exit_code == 0, ip.stderr
    assert "the IP-Adapter's image does not change the plan; gen needs it (--ip-image IMAGE)" \
        in ip.stderr
    # and is counted, as the ControlNet is (it was left out: found by QA)
    assert json_lines(ip.stdout)[0]["peak_bytes"] > other["peak_bytes"]
    assert_usage_error(cli("plan", "--ip-adapter", files["ip"], "--size", "2048"),
                       "does not fit this model", "2048 in the model's UNet")


def test_plan_from_a_record_whose_control_image_is_gone_plans_it(files, tmp_path, monkeypatch,
                                                                 asked):
    """The image does not change the plan: a record's that is not here (moved, or relative
    to another folder) was refused, as gen refuses it."""
    import shutil

    edges = tmp_path / "edges.png"
    shutil.copy(files["control"], edges)
    made = cli("gen", "a", *TINY, "--control", edges, "--control-model", files["control_model"],
               "-o", tmp_path / "r.png")
    assert made.exit_code == 0, made.stderr
    edges.unlink()
    planned = cli("plan", "--from", tmp_path / "r.png")
    assert planned.exit_code == 0, planned.stderr
    assert f"the ControlNet's image {edges} is not here: it does not change the plan; gen " \
           "needs it (--control IMAGE)" in planned.stderr
    refused = cli("gen", "--from", tmp_path / "r.png", "--dry-run")
    assert refused.exit_code == 2 and f"{edges}: no such file" in error_lines(refused.stderr)[0]
    # relative to the folder it was made in
    monkeypatch.chdir(files["root"])
    made = cli("gen", "a", *TINY, "--control", "edges.png", "--control-model",
               files["control_model"], "-o", tmp_path / "rel.png")
    assert made.exit_code == 0, made.stderr
    monkeypatch.chdir(tmp_path)
    planned = cli("plan", "--from", tmp_path / "rel.png")
    assert planned.exit_code == 0, planned.stderr
    assert "the ControlNet's image edges.png is not here" in planned.stderr
    refused = cli("gen", "--from", tmp_path / "rel.png", "--dry-run")
    assert refused.exit_code == 2
    assert "with the control image edges.png" in error_lines(refused.stderr)[0]


def test_a_lora_in_a_folder_of_folders_is_read_here_not_asked_of_the_hub(files, tmp_path,
                                                                          monkeypatch, asked):
    """loras/sdxl/style.safetensors reads like a Hub file (owner/repo/file): offline it was
    refused as not cached (exit 1) though it was here, and so was a folder holding one."""
    import shutil

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "loras" / "sdxl").mkdir(parents=True)
    shutil.copy(files["lora"], tmp_path / "loras" / "sdxl" / "style.safetensors")
    made = cli("gen", "a", *TINY, "--lora", "loras/sdxl/style.safetensors:0.8", "-o",
               tmp_path / "r.png", "--json")
    assert made.exit_code == 0, made.stderr
    assert json_lines(made.stdout)[0]["local"] == ["lora"]
    shutil.copytree(tmp_path / "loras" / "sdxl", tmp_path / "held")  # a folder holding one
    assert cli("gen", "a", *TINY, "--lora", "held", "--dry-run").exit_code == 0
    # Elsewhere the record's LoRA is said to be missing here, not looked for on the Hub
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    refused = cli("gen", "--from", tmp_path / "r.png", "--dry-run")
    assert refused.exit_code == 2
    assert "made with the LoRA loras/sdxl/style.safetensors, a path relative" in \
        error_lines(refused.stderr)[0]


def test_from_at_another_scale_refuses_a_changed_ip_image_recorded_at_scale_0(files, tmp_path,
                                                                             asked):
    """An --ip-scale 0 record kept no sha256 of its image (a ControlNet's at scale 0 keeps
    one): --from at 0.6 ran with a changed image without a word."""
    import shutil

    look = tmp_path / "look.png"
    shutil.copy(files["ip_image"], look)
    made = cli("gen", "a", *TINY, "--ip-image", look, "--ip-adapter", files["ip"],
               "--ip-scale", "0", "-o", tmp_path / "q.png", "--json")
    assert made.exit_code == 0, made.stderr
    from hires.images import file_sha256

    assert json_lines(made.stdout)[0]["addons"]["ip_adapter"]["image_sha256"] == \
        file_sha256(look)
    Image.new("RGB", (96, 64), "red").save(look)
    refused = cli("gen", "--from", tmp_path / "q.png", "--ip-scale", "0.6", "--dry-run")
    assert refused.exit_code == 2 and "has changed since this image was made" in \
        error_lines(refused.stderr)[0]
    # at scale 0 still, the image makes nothing: not compared
    assert cli("gen", "--from", tmp_path / "q.png", "--dry-run").exit_code == 0


def test_a_library_call_drops_a_jobs_addon_with_none(files, tiny):
    """generate(job, lora="none") looked for a file named 'none', as control="none" did: the
    keywords did not take what the flags and job files take."""
    import hires
    from hires.job import Job, JobError

    job = Job(prompt="a", width=256, height=256, steps=1, seed=5,
              lora=[f"{files['lora']}:0.5"], control=str(files["control"]),
              control_model=str(files["control_model"]))
    assert hires.generate(job, components=tiny, lora="none", control="none").addons == {}
    kept = hires.generate(job, components=tiny, lora=["none", f"{files['lora']}:0.2"])
    assert [lo["scale"] for lo in kept.addons["lora"]] == [0.2] and "controlnet" in kept.addons
    with pytest.raises(JobError, match="control none drops the ControlNet: leave out "
                                       "control_model"):
        hires.generate(job, components=tiny, control="none",
                       control_model=str(files["control_model"]))


def test_a_presets_empty_addon_model_is_named_as_its_key(tmp_path, asked):
    preset = write(tmp_path / "e.toml", 'control_model = ""\n')
    assert_usage_error(cli("gen", "a", "--model", "tiny", "--preset", preset, "--dry-run"),
                       "'control_model' in preset 'e'", "is empty")


@pytest.mark.parametrize("keys, key", [
    ('lora = ["gone.safetensors"]', "lora"),
    ('vae = "gone"', "vae"),
    ('model = "gone"', "model"),
    ('control_model = "gone"\ncontrol = "EDGES"', "control_model"),
    ('ip_image = "gone.png"', "ip_image"),
    ('image = "gone.png"', "image"),  # an upscale's input: it was "gone.png: no such file"
])
@pytest.mark.parametrize("command", ["gen", "plan"])
def test_a_presets_missing_file_is_named_as_its_key(keys, key, command, files, tmp_path,
                                                    monkeypatch, asked):
    monkeypatch.chdir(tmp_path)
    preset = write(tmp_path / "p.toml", keys.replace("EDGES", str(files["control"])) + "\n")
    prompt = ["a"] if command == "gen" else []
    dry = ["--dry-run"] if command == "gen" else []
    result = cli(command, *prompt, "--preset", preset, "--size", "256", *dry)
    if command == "plan" and key == "ip_image":  # an image does not change the plan
        assert result.exit_code == 0, result.stderr
        assert "the IP-Adapter's image gone.png is not here" in result.stderr
        return
    assert_usage_error(result, f"'{key}' in preset 'p' ({preset}): gone",
                       f"relative paths are read from the current folder ({tmp_path}), not "
                       "the preset's")
    if key == "image":  # no flag gives it: `hires up IMAGE`
        return
    # The same file from a flag is the flag's
    flag = "--" + key.replace("_", "-")
    mended = write(tmp_path / "q.toml", keys.replace("EDGES", str(files["control"]))
                   .replace("gone", "there") + "\n")
    again = cli(command, *prompt, "--preset", mended, flag, "gone", "--size", "256", *dry)
    assert_usage_error(again, f"{flag} gone")
    assert "preset" not in error_lines(again.stderr)[0]


def test_a_records_missing_file_is_named_in_the_record(files, tmp_path, asked):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    gone = tmp_path / "gone.safetensors"
    info.add_itxt("hires", json.dumps({"job": {"prompt": "a", "lora": [str(gone)]},
                                       "result": {}}))
    Image.new("RGB", (8, 8)).save(tmp_path / "r.png", pnginfo=info)
    result = cli("gen", "--from", tmp_path / "r.png", "--model", "tiny", "--dry-run")
    assert_usage_error(result, f"'lora' in metadata of {tmp_path / 'r.png'}: {gone}: no such "
                               "file")


def test_a_records_addon_without_its_other_half_is_named_in_the_record(files, tmp_path, asked):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("hires", json.dumps({"job": {"prompt": "a", "control": str(files["control"])},
                                       "result": {}}))
    Image.new("RGB", (8, 8)).save(tmp_path / "r.png", pnginfo=info)
    result = cli("gen", "--from", tmp_path / "r.png", "--model", "tiny", "--dry-run")
    assert_usage_error(result, f"'control' in metadata of {tmp_path / 'r.png'} needs "
                               "--control-model")


def bad_lora(files: dict, tmp_path) -> str:
    """The tiny LoRA with one matrix of the wrong width: made for another model."""
    from safetensors.torch import load_file, save_file

    state = load_file(files["lora"])
    key = next(k for k in state if k.endswith("lora_down.weight") and "attn1_to_q" in k)
    state[key] = torch.zeros(state[key].shape[0], state[key].shape[1] + 8)
    save_file(state, tmp_path / "other.safetensors")
    return str(tmp_path / "other.safetensors")


def pickled_lora(files: dict, tmp_path) -> str:
    from safetensors.torch import load_file

    torch.save(load_file(files["lora"]), tmp_path / "style.pt")
    return str(tmp_path / "style.pt")


def sd15_controlnet(tmp_path) -> str:
    """A small ControlNet shaped like SD 1.5's (768-wide text, no SDXL time embedding)."""
    from diffusers import ControlNetModel

    net = ControlNetModel(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
                          down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                          cross_attention_dim=32, attention_head_dim=2,
                          conditioning_embedding_out_channels=(8, 16))
    net.save_pretrained(tmp_path / "sd15-net")
    return str(tmp_path / "sd15-net")


def pickled_ip(tmp_path) -> str:
    torch.save({}, tmp_path / "ip-adapter_sdxl.bin")
    (tmp_path / "image_encoder").mkdir()
    return str(tmp_path / "ip-adapter_sdxl.bin")


def lora_in_ip(files: dict, tmp_path) -> str:
    """An IP-Adapter folder (its image encoder) whose weights file is a LoRA."""
    import shutil

    folder = tmp_path / "ip-lora"
    shutil.copytree(files["ip"] / "image_encoder", folder / "image_encoder")
    shutil.copy(files["lora"], folder / "style.safetensors")
    return str(folder)


@pytest.mark.parametrize("case, words", [
    ("missing-lora", ["--lora", "no such"]),
    ("other-lora", ["does not fit"]),
    ("pickle-lora", ["--allow-pickle"]),
    ("missing-control-model", ["--control-model", "no such"]),
    ("control-without-model", ["--control needs --control-model"]),
    ("model-without-control", ["--control-model needs --control"]),
    ("adapter-without-image", ["--ip-adapter needs --ip-image"]),  # it was ignored, unsaid
    ("missing-ip-image", ["--ip-image", "no such"]),
    ("other-controlnet", ["another model architecture", "SDXL ControlNet"]),
    ("pickle-ip-adapter", ["--allow-pickle"]),
    # it failed after the model loaded, as 'made for another model'
    ("lora-as-ip-adapter", ["is not an IP-Adapter", "it looks like a LoRA: give it with --lora"]),
    ("bad-scale", ["--control-scale must be a finite number"]),  # the flag, not the key
])
def test_bad_addon_inputs_exit_2_with_one_line(case, words, files, tmp_path, asked):
    args = {
        "missing-lora": ["--lora", str(tmp_path / "nope.safetensors")],
        "other-lora": ["--lora", bad_lora(files, tmp_path)] if case == "other-lora" else [],
        "pickle-lora": ["--lora", pickled_lora(files, tmp_path)] if case == "pickle-lora" else [],
        "missing-control-model": ["--control", str(files["control"]), "--control-model",
                                  str(tmp_path / "no-net")],
        "control-without-model": ["--control", str(files["control"])],
        "model-without-control": ["--control-model", str(files["control_model"])],
        "missing-ip-image": ["--ip-image", str(tmp_path / "none.png")],
        "adapter-without-image": ["--ip-adapter", str(tmp_path / "some-adapter")],
        "other-controlnet": ["--control", str(files["control"]), "--control-model",
                             sd15_controlnet(tmp_path) if case == "other-controlnet" else ""],
        "pickle-ip-adapter": ["--ip-image", str(files["ip_image"]), "--ip-adapter",
                              pickled_ip(tmp_path) if case == "pickle-ip-adapter" else ""],
        "lora-as-ip-adapter": ["--ip-image", str(files["ip_image"]), "--ip-adapter",
                               lora_in_ip(files, tmp_path) if case == "lora-as-ip-adapter"
                               else ""],
        "bad-scale": ["--control", str(files["control"]), "--control-model",
                      str(files["control_model"]), "--control-scale", "nan"],
    }[case]
    out = tmp_path / "out.png"
    result = cli("gen", "x", *TINY, *args, "-o", out)
    assert_usage_error(result, *words)
    assert not out.exists()


@pytest.mark.parametrize("flag", ["--control", "--ip-image"])
def test_an_unreadable_add_on_image_is_refused_before_any_loading(flag, files, tmp_path, asked):
    """A truncated or GIF image passed the dry run (exit 0) and, in a run, failed only after the
    model and the add-on had loaded (minutes with SDXL, or a first download)."""
    truncated = tmp_path / "half.png"
    whole = files["control"].read_bytes()
    truncated.write_bytes(whole[:len(whole) // 2])
    gif = tmp_path / "anim.gif"
    Image.new("RGB", (32, 32)).save(gif)
    extra = ["--control-model", str(files["control_model"])] if flag == "--control" else []
    for bad, said in ((truncated, "truncated image, cut short ("),
                      (gif, "GIF images are not accepted")):
        for dry in (("--dry-run",), ()):
            result = cli("gen", "x", *TINY, flag, bad, *extra, *dry, "-o", tmp_path / "x.png")
            assert_usage_error(result, f"{flag} {bad}", said)
    assert asked == []  # nothing loaded


@pytest.mark.parametrize("flag", ["--vae", "--linfusion", "--lora", "--control-model",
                                  "--ip-adapter"])
def test_an_uncached_hub_id_offline_exits_1_like_the_model(flag, files, tmp_path, request):
    """Not cached while the Hub is unreachable is the machine's state, not a usage error: the
    add-ons exited 2 and --model/--vae 1. Tests run with HF_HUB_OFFLINE=1, which the message
    named as 'the Hub cannot be reached'."""
    if flag not in ("--vae", "--linfusion"):  # those load with the model; add-ons on the cached
        request.getfixturevalue("asked")
    args = {"--vae": [], "--linfusion": [], "--lora": [],
            "--control-model": ["--control", str(files["control"])],
            "--ip-adapter": ["--ip-image", str(files["ip_image"])]}[flag]
    out = tmp_path / "out.png"
    result = cli("gen", "x", *TINY, *args, flag, "nobody/not-cached", "-o", out)
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert error_lines(result.stderr) == [result.stderr.strip()], result.stderr
    # the user's setting, not a network that is down, is named (and how to undo it)
    assert "HF_HUB_OFFLINE is set; unset it to download it" in result.stderr
    assert not out.exists()


def test_a_single_file_controlnet_whose_config_is_not_cached_is_refused_in_the_dry_run(
        files, tiny, tmp_path, request):
    """diffusers reads a single-file ControlNet with a Hub ControlNet's config: offline and not
    cached, the dry run passed and the run failed after the model loaded."""
    from helpers_control import tiny_controlnet
    from safetensors.torch import save_file

    single = tmp_path / "control.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_controlnet(tiny.unet).state_dict().items()},
              single)
    args = ["gen", "x", *TINY, "--control-model", str(single), "--control",
            str(files["control"])]
    dry = cli(*args, "--dry-run")
    assert dry.exit_code == 1, (dry.stdout, dry.stderr)
    assert error_lines(dry.stderr) == [dry.stderr.strip()], dry.stderr
    # the config's repo, which diffusers picks by the file's tensors, is named
    assert "diffusers/controlnet-canny-sdxl-1.0," in dry.stderr
    assert "HF_HUB_OFFLINE is set; unset it to cache it, or pass a diffusers folder" in dry.stderr
    asked = request.getfixturevalue("asked")
    out = tmp_path / "out.png"
    run = cli(*args, "-o", out)
    assert (run.exit_code, run.stderr) == (1, dry.stderr)
    assert asked == [] and not out.exists()  # said before the model loaded
    assert cli("plan", "x", *TINY[:-1], "--control-model", str(single)).exit_code == 0


def test_dpmpp_2m_changes_the_image_and_karras_changes_it_again(tiny):
    from hires import generate

    common = dict(prompt="a lighthouse", width=256, height=256, steps=6, seed=3)
    euler = np.asarray(generate(components=tiny, **common).image).astype(int)
    dpm = np.asarray(generate(components=tiny, sampler="dpmpp-2m", **common).image).astype(int)
    karras = generate(components=tiny, sampler="dpmpp-2m", karras=True, **common)
    assert np.abs(dpm - euler).mean() > 0.5
    assert np.abs(np.asarray(karras.image).astype(int) - dpm).mean() > 0.5
    assert karras.job.sampler == "dpmpp-2m" and karras.job.karras


@pytest.mark.parametrize("model", ["tiny", "stabilityai/stable-diffusion-xl-base-1.0"])
def test_the_planner_counts_a_controlnet(model, files):
    """A dry run (no weights) with a ControlNet plans more work and memory in every stage."""
    common = ("plan", "--size", "1024" if model == "tiny" else "4096", "--model", model,
              "--json")
    plain = json.loads(cli(*common).stdout)["stages"]
    control = cli(*common, "--control", files["control"], "--control-model", "some/controlnet")
    assert control.exit_code == 0, control.stderr
    stages = json.loads(control.stdout)["stages"]
    assert len(stages) == len(plain)
    for a, b in zip(plain, stages):
        assert b["tflop"] > a["tflop"] and b["peak_bytes"] > a["peak_bytes"]


def test_from_refuses_when_an_addon_file_changed(files, tmp_path, asked, tiny):
    import shutil

    from helpers_lora import write_tiny_lora

    lora, control = tmp_path / "mine.safetensors", tmp_path / "edges.png"
    shutil.copy(files["lora"], lora)
    shutil.copy(files["control"], control)
    first = tmp_path / "first.png"
    made = cli("gen", "x", *TINY, "--lora", f"{lora}:0.5", "--control", control,
               "--control-model", files["control_model"], "-o", first)
    assert made.exit_code == 0, made.stderr
    write_tiny_lora(lora, tiny.pipe, seed=9)  # retrained under the same name
    assert_usage_error(cli("gen", "--from", first, "-o", tmp_path / "a.png", "-q"),
                       str(lora), "has changed")
    shutil.copy(files["lora"], lora)
    Image.open(files["ip_image"]).save(control)  # another control image
    assert_usage_error(cli("gen", "--from", first, "-o", tmp_path / "b.png", "-q"),
                       str(control), "has changed")
    assert not (tmp_path / "a.png").exists() and not (tmp_path / "b.png").exists()


def test_a_batch_job_naming_a_missing_addon_file_stops_the_batch_before_any_work(tmp_path,
                                                                                   asked):
    jobs = write(tmp_path / "jobs.toml", f"""
[defaults]
model = "tiny"
size = 256

[[job]]
prompt = "fine"

[[job]]
prompt = "broken"
control = "{tmp_path / 'none.png'}"
control_model = "{tmp_path / 'net'}"
""")
    result = cli("batch", jobs, "-o", tmp_path / "out", "-q")
    assert_usage_error(result, "job 1", "none.png", "no such file")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.png"))


@pytest.mark.parametrize("recorded", [{"lora": 5}, {"lora": "x"}, {"controlnet": [1]},
                                      {"ip_adapter": 3}])
def test_a_tampered_addons_record_is_no_crash(recorded):
    from hires.addons import check_unchanged
    from hires.job import Job

    check_unchanged(Job(lora=["style.safetensors"]), recorded)  # nothing it names to check


def test_two_threads_on_one_components_each_get_their_own_image(files, tiny):
    """Each thread's add-ons went onto the other's image too (or its hooks read the other's
    ControlNet: an IndexError): one components now runs one job at a time."""
    import threading

    from hires import generate

    common = dict(prompt="a lighthouse", width=256, height=256, steps=3, seed=3)
    jobs = [dict(lora=[f"{files['lora']}:0.8"], control=str(files["control"]),
                 control_model=str(files["control_model"])),
            dict(ip_image=str(files["ip_image"]), ip_adapter=str(files["ip"]), ip_scale=0.9)]

    def make(job: dict) -> np.ndarray:
        return np.asarray(generate(components=tiny, **common, **job).image).astype(int)

    alone = [make(job) for job in jobs]
    assert np.abs(alone[0] - alone[1]).mean() > 0.5
    made: dict[int, object] = {}
    start = threading.Barrier(len(jobs))

    def run(i: int) -> None:
        start.wait()
        try:
            made[i] = make(jobs[i])
        except Exception as e:  # said below, in the test's thread
            made[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, reference in enumerate(alone):
        assert not isinstance(made[i], Exception), made[i]
        assert np.array_equal(made[i], reference), i


def test_a_job_started_from_a_running_jobs_callback_is_refused(files, tiny):
    """The lock let the same thread in: the nested job's LoRA changed the outer image."""
    from hires import generate
    from hires.job import JobError

    common = dict(prompt="a fox", width=256, height=256, steps=2, seed=3, components=tiny)
    said: list[str] = []

    def nested(event) -> None:
        if not said:
            try:
                generate(**common, lora=[str(files["lora"])])
            except JobError as e:
                said.append(str(e))

    alone = np.asarray(generate(**common).image)
    outer = np.asarray(generate(**common, progress=nested).image)
    assert said and "a job is running on these components already" in said[0]
    assert np.array_equal(outer, alone)
    assert tiny.running_in is None  # and the next job runs
    assert np.array_equal(np.asarray(generate(**common).image), alone)


def test_an_addon_that_cannot_load_raises_what_the_readme_says(files, tiny, tmp_path):
    """README said ModelError for an add-on that cannot load (JobError is raised) and that
    messages name `allow_pickle=True` (a pickle LoRA's said `allow_pickle`, a model's
    `allow_pickle=True`: now both say the latter)."""
    import re
    from pathlib import Path

    from hires import JobError, generate

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    start = readme.index("Errors a script can meet")
    said = " ".join(readme[start:readme.index("\n\n", start)].split())
    as_job_error = said[said.index("`hires.JobError`"):said.index("`hires.models.ModelError`")]
    assert "LoRA, ControlNet or IP-Adapter that cannot load" in as_job_error
    keyword = re.search(r"name the library's keywords \(`([^`]+)`", said).group(1)
    common = dict(components=tiny, width=256, height=256, steps=1)
    with pytest.raises(JobError) as pickled:
        generate("x", lora=[pickled_lora(files, tmp_path)], **common)
    assert keyword in str(pickled.value) and "--allow-pickle" not in str(pickled.value)
    assert "pass allow_pickle=True if you trust it" in str(pickled.value)
    with pytest.raises(JobError, match="another model architecture"):  # found once loaded
        generate("x", control=str(files["control"]), control_model=sd15_controlnet(tmp_path),
                 **common)
