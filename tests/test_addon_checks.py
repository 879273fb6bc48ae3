"""Add-on checks found by QA (tiny model, offline): --from notices a changed ControlNet or
IP-Adapter weight, and takes one given again as the user's choice; a dry run refuses what a run
would refuse after the model loaded; a ControlNet for another architecture says so; a folder as
an add-on image; --control-scale 0 runs no ControlNet; a control image's dropped transparency
and far-off aspect are said."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from helpers_cli import assert_usage_error, cli, error_lines, json_lines
from PIL import Image
from safetensors.torch import load_file, save_file

from hires.ip_adapter import WEIGHT_NAME
from hires.job import Job, JobError

TINY = ("--model", "tiny", "--size", "256", "--steps", "1", "--seed", "5", "-q")


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny):
    """A LoRA, a ControlNet folder, an IP-Adapter folder and two small images, made offline."""
    from helpers_control import tiny_controlnet
    from helpers_ip import write_tiny_ip_adapter
    from helpers_lora import write_tiny_lora

    root = tmp_path_factory.mktemp("checks")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "edges.png")
    Image.fromarray(pixels[:64]).save(root / "style.png")
    tiny_controlnet(tiny.unet).save_pretrained(root / "control-net")
    write_tiny_ip_adapter(root / "ip", tiny.pipe)
    return {"lora": write_tiny_lora(root / "style.safetensors", tiny.pipe),
            "control_model": root / "control-net", "ip": root / "ip",
            "control": root / "edges.png", "ip_image": root / "style.png", "root": root}


def control_flags(files, model=None, scale="1") -> list[str]:
    return ["--control", str(files["control"]), "--control-model",
            str(model or files["control_model"]), "--control-scale", scale]


def retrained(folder, tiny, seed: int = 9) -> None:
    """The ControlNet in `folder` with other weights, under the same names."""
    from helpers_control import tiny_controlnet

    net = tiny_controlnet(tiny.unet, seed=seed)
    for conv in net.controlnet_down_blocks:  # (sure to differ, whatever the seed does)
        conv.bias.data += 0.5
    net.save_pretrained(folder)


# 1. --from and the add-ons' weights


def test_from_refuses_a_changed_controlnet_or_ip_adapter_weight(files, tmp_path, asked, tiny):
    """Both were re-run silently into another image: the ControlNet's weights had no sha256
    in the record, and the IP-Adapter's was recorded but never compared."""
    from helpers_ip import write_tiny_ip_adapter

    net, ip = tmp_path / "net", tmp_path / "ip"
    shutil.copytree(files["control_model"], net)
    shutil.copytree(files["ip"], ip)
    first = tmp_path / "first.png"
    made = cli("gen", "x", *TINY, *control_flags(files, net), "--ip-image", files["ip_image"],
               "--ip-adapter", ip, "-o", first, "--json")
    assert made.exit_code == 0, made.stderr
    record = json_lines(made.stdout)[0]["addons"]["controlnet"]
    weights = net / "diffusion_pytorch_model.safetensors"
    from helpers_cli import sha256

    assert record["sha256"] == sha256(weights)  # the weight file's own, as sha256sum says
    kept = weights.read_bytes()
    retrained(net, tiny)
    result = cli("gen", "--from", first, "-o", tmp_path / "a.png", "-q")
    assert_usage_error(result, f"{net} has changed", "--control-model")
    weights.write_bytes(kept)
    write_tiny_ip_adapter(ip, tiny.pipe, seed=9)
    result = cli("gen", "--from", first, "-o", tmp_path / "b.png", "-q")
    assert_usage_error(result, f"{ip} has changed", "--ip-adapter")
    assert not (tmp_path / "a.png").exists() and not (tmp_path / "b.png").exists()


def test_from_refuses_a_changed_controlnet_config_or_ip_image_encoder(files, tmp_path, asked,
                                                                      tiny):
    """Both ran silently into another image (QA: max 236 and 255 off): only the weight
    files were hashed into the record."""
    from helpers_ip import write_tiny_ip_adapter

    net, ip = tmp_path / "net", tmp_path / "ip"
    shutil.copytree(files["control_model"], net)
    shutil.copytree(files["ip"], ip)
    first = tmp_path / "first.png"
    made = cli("gen", "x", *TINY, *control_flags(files, net), "--ip-image", files["ip_image"],
               "--ip-adapter", ip, "-o", first)
    assert made.exit_code == 0, made.stderr
    config = net / "config.json"
    kept = config.read_text()
    config.write_text(json.dumps({**json.loads(kept), "global_pool_conditions": True}))
    result = cli("gen", "--from", first, "-o", tmp_path / "a.png", "-q")
    assert_usage_error(result, f"{net} (its config.json) has changed", "--control-model")
    config.write_text(kept)
    other = tmp_path / "other-ip"
    write_tiny_ip_adapter(other, tiny.pipe, seed=9)
    shutil.rmtree(ip / "image_encoder")
    shutil.copytree(other / "image_encoder", ip / "image_encoder")
    result = cli("gen", "--from", first, "-o", tmp_path / "b.png", "-q")
    # named as what changed: not the adapter's weights, which are as they were
    assert_usage_error(result, f"{ip} (its image encoder) has changed", "--ip-adapter")
    assert not (tmp_path / "a.png").exists() and not (tmp_path / "b.png").exists()
    again = cli("gen", "x", *TINY, *control_flags(files, net), "--ip-image", files["ip_image"],
                "--ip-adapter", ip, "-o", first)  # --n's and batch's check: the same words
    assert_usage_error(again, f"was made with {ip} (its image encoder) as it was before")


def test_a_changed_lora_is_told_to_be_given_with_every_lora_and_scale(files, tmp_path, asked,
                                                                      tiny):
    """The advice was '--lora b.safetensors': following it dropped a and set b's 0.5 to 1."""
    from helpers_lora import write_tiny_lora

    a, b = tmp_path / "a b.safetensors", tmp_path / "b.safetensors"
    shutil.copy(files["lora"], a)
    shutil.copy(files["lora"], b)
    first = tmp_path / "two.png"
    made = cli("gen", "x", *TINY, "--lora", f"{a}:0.8", "--lora", f"{b}:0.5", "-o", first)
    assert made.exit_code == 0, made.stderr
    write_tiny_lora(b, tiny.pipe, seed=9)
    result = cli("gen", "--from", first, "-o", tmp_path / "c.png", "-q")
    assert_usage_error(result, f"{b} has changed",
                       f"give --lora '{a}:0.8' --lora {b}:0.5 yourself")


def test_a_single_file_controlnet_is_hashed_as_its_file(files, tmp_path):
    from hires.controlnet import weights_sha256

    weights = files["control_model"] / "diffusion_pytorch_model.safetensors"
    from helpers_cli import sha256

    assert weights_sha256(str(weights)) == sha256(weights)
    assert weights_sha256(str(files["control_model"])) == sha256(weights)
    assert weights_sha256("owner/controlnet") is None  # a Hub id: its revision is recorded


RECORDED = {"lora": [{"ref": "L.safetensors", "sha256": "0" * 64}],
            "controlnet": {"model": "net", "image": "c.png", "image_sha256": "0" * 64,
                           "sha256": "0" * 64},
            "ip_adapter": {"ref": "ip", "image": "i.png", "image_sha256": "0" * 64,
                           "sha256": "0" * 64}}


@pytest.mark.parametrize("key", ["lora", "control", "control_model", "ip_image", "ip_adapter"])
def test_an_addon_given_as_a_flag_with_from_is_the_users_choice(key, files, tmp_path,
                                                                  monkeypatch):
    """The refusal said 'give the add-on options yourself', and giving them was refused the
    same way: the merged job was compared, not what the flags gave."""
    from hires.addons import check_unchanged

    monkeypatch.chdir(tmp_path)
    shutil.copy(files["lora"], "L.safetensors")
    shutil.copytree(files["control_model"], "net")
    shutil.copytree(files["ip"], "ip")
    shutil.copy(files["control"], "c.png")
    shutil.copy(files["ip_image"], "i.png")
    job = Job(lora=["L.safetensors:0.5"], control="c.png", control_model="net",
              ip_image="i.png", ip_adapter="ip")
    # Each of the five differs from the record (its sha256 is all zeros): compared, the one
    # not given is refused, named with its flag; given too, it is taken as it is now.
    flag = {"control_model": "--control-model", "ip_adapter": "--ip-adapter",
            "ip_image": "--ip-image"}.get(key, f"--{key}")
    others = {"lora", "control", "control_model", "ip_image", "ip_adapter"} - {key}
    with pytest.raises(JobError, match=f"has changed .* give {flag} "):
        check_unchanged(job, RECORDED, given=others)
    check_unchanged(job, RECORDED, given=others | {key})
    with pytest.raises(JobError, match="has changed"):
        check_unchanged(job, RECORDED)  # (as build_job called it: every one compared)


def test_from_takes_the_addons_given_as_flags_as_they_are(files, tmp_path, monkeypatch):
    """The command line: every changed add-on given again as a flag runs as it is now."""
    from PIL import PngImagePlugin

    monkeypatch.chdir(tmp_path)
    shutil.copy(files["control"], "c.png")
    shutil.copytree(files["control_model"], "net")
    job = {"prompt": "a cat", "model": "tiny", "width": 256, "height": 256, "steps": 1,
           "control": "c.png", "control_model": "net"}
    info = PngImagePlugin.PngInfo()
    info.add_itxt("hires", json.dumps({"job": job, "result": {"addons": {
        "controlnet": RECORDED["controlnet"]}}}))
    Image.new("RGB", (256, 256)).save("made.png", pnginfo=info)
    refused = cli("gen", "--from", "made.png", "--dry-run")
    assert refused.exit_code == 2 and "has changed" in refused.stderr
    taken = cli("gen", "--from", "made.png", "--control", "c.png", "--control-model", "net",
                "--dry-run")
    assert taken.exit_code == 0, taken.stderr


# 3. What a dry run (and `hires plan`) checks before any loading


def lora_as_controlnet(files, tmp_path):
    return str(files["lora"])


def control_lora(files, tmp_path):
    """The layout of Stability's Control-LoRA files: a marker tensor and LoRA halves."""
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "control-lora-canny-rank128.safetensors"
    save_file({"lora_controlnet": torch.zeros(1),
               "input_blocks.1.0.in_layers.2.up": torch.zeros(8, 4),
               "input_blocks.1.0.in_layers.2.down": torch.zeros(4, 8)}, str(path))
    return str(path)


def folder_without_config(files, tmp_path):
    net = tmp_path / "net"
    shutil.copytree(files["control_model"], net)
    (net / "config.json").unlink()
    return str(net)


def ip_folder(case):
    def make(files, tmp_path):
        ip = tmp_path / "ip"
        ip.mkdir()
        if case != "empty":
            shutil.copytree(files["ip"] / "image_encoder", ip / "image_encoder")
            for name in ("a", "b") if case == "two" else ("a",):
                shutil.copy(files["ip"] / "ip-adapter_sdxl.safetensors",
                            ip / f"{name}.safetensors")
        if case == "no-encoder":
            shutil.rmtree(ip / "image_encoder")
        return str(ip)
    return make


def cut_short(file) -> None:
    """`file` as an interrupted download leaves it: its header whole, half its tensors."""
    whole = file.read_bytes()
    file.write_bytes(whole[:len(whole) // 2])


def truncated_controlnet(files, tmp_path):
    net = tmp_path / "net"
    shutil.copytree(files["control_model"], net)
    cut_short(net / "diffusion_pytorch_model.safetensors")
    return str(net)


def truncated_ip(part):
    def make(files, tmp_path):
        ip = tmp_path / "ip"
        shutil.copytree(files["ip"], ip)
        cut_short(ip / ("ip-adapter_sdxl.safetensors" if part == "weight" else
                        "image_encoder/model.safetensors"))
        return str(ip)
    return make


@pytest.mark.parametrize(("flag", "make", "words"), [
    ("--control-model", folder_without_config, ["--control-model", "no config.json"]),
    # (these failed after loading: 'Unable to load weights from checkpoint file ...',
    # 'Error while deserializing header: incomplete metadata')
    ("--control-model", truncated_controlnet,
     ["--control-model", "diffusion_pytorch_model.safetensors is truncated (", "re-download it"]),
    ("--ip-adapter", truncated_ip("weight"),
     ["ip-adapter_sdxl.safetensors is truncated (", "re-download it"]),
    ("--ip-adapter", truncated_ip("encoder"),
     ["image_encoder/model.safetensors is truncated (", "re-download it"]),
    ("--control-model", lora_as_controlnet, ["style.safetensors is not a ControlNet",
                                             "--lora"]),
    ("--control-model", lambda f, t: "tiny", ["'tiny' is a model, not a ControlNet"]),
    ("--control-model", control_lora, ["is a Control-LoRA", "cannot run yet",
                                       "a full SDXL ControlNet"]),
    ("--ip-adapter", ip_folder("empty"), ["must hold one weight file"]),
    ("--ip-adapter", ip_folder("two"), ["a.safetensors, b.safetensors"]),
    ("--ip-adapter", ip_folder("no-encoder"), ["no image encoder", "image_encoder/"]),
])
def test_a_dry_run_refuses_an_addon_that_cannot_load(flag, make, words, files, tmp_path,
                                                      asked):
    """Each passed --dry-run (exit 0) and failed a run only once the model had loaded."""
    ref = make(files, tmp_path)
    args = (control_flags(files, ref) if flag == "--control-model" else
            ["--ip-image", str(files["ip_image"]), "--ip-adapter", ref])
    for dry in (("--dry-run",), ()):
        result = cli("gen", "x", *TINY, *args, *dry, "-o", tmp_path / "x.png")
        assert_usage_error(result, *words)
    assert asked == []  # nothing loaded


@pytest.mark.parametrize(("part", "kind"), [("vae", "an AutoencoderKL"),
                                            ("unet", "a UNet2DConditionModel"),
                                            ("linfusion", "a LinFusion")])
def test_another_models_folder_as_controlnet_is_refused_before_loading(
        part, kind, files, tiny_folder, tmp_path, asked):
    """A VAE's, UNet's or LinFusion's folder passed --dry-run and failed the run once the
    model had loaded: 'NotImplementedError: Cannot copy out of meta tensor', exit 1."""
    args = control_flags(files, tiny_folder / part)
    for dry in (("--dry-run",), ()):
        result = cli("gen", "x", *TINY, *args, *dry, "-o", tmp_path / "x.png")
        assert_usage_error(result, f"holds {kind}, not a ControlNet (a ControlNetModel)")
    assert asked == []


def test_a_controlnet_named_tiny_is_refused_by_the_loader_too():
    from hires.controlnet import ControlError, load_controlnet

    with pytest.raises(ControlError, match="'tiny' is a model, not a ControlNet"):
        load_controlnet("tiny", dtype=None)


@pytest.mark.parametrize("flag", ["--control-model", "--ip-adapter"])
def test_a_dry_run_says_an_uncached_hub_addon_offline(flag, files, tmp_path):
    """It planned as if the Hub id would load; HF_HUB_OFFLINE is set in the tests."""
    args = (control_flags(files, "nobody/not-cached") if flag == "--control-model" else
            ["--ip-image", str(files["ip_image"]), "--ip-adapter", "nobody/not-cached"])
    result = cli("gen", "x", *TINY, *args, "--dry-run")
    assert result.exit_code == 1, (result.stdout, result.stderr)  # as a run's load says
    assert error_lines(result.stderr) == [result.stderr.strip()]
    assert "'nobody/not-cached' is not in the local cache" in result.stderr
    assert "HF_HUB_OFFLINE is set; unset it to download it" in result.stderr


@pytest.mark.parametrize("key", ["control_model", "ip_adapter", "lora"])
def test_a_batch_names_the_job_whose_hub_addon_is_not_cached_offline(key, files, tmp_path):
    """The message said what was missing but not which job of the file asked for it."""
    uses = {"control_model": f'control = "{files["control"]}"',
            "ip_adapter": f'ip_image = "{files["ip_image"]}"', "lora": ""}[key]
    value = '["nobody/not-cached"]' if key == "lora" else '"nobody/not-cached"'
    jobs = tmp_path / "jobs.toml"
    jobs.write_text('[defaults]\nmodel = "tiny"\nsize = 256\nsteps = 1\n\n'
                    '[[job]]\nprompt = "a"\n\n'
                    f'[[job]]\nprompt = "b"\n{uses}\n{key} = {value}\n')
    for dry in (["--dry-run"], []):
        result = cli("batch", jobs, "-o", tmp_path / "out", *dry)
        assert result.exit_code == 1, (result.stdout, result.stderr)  # as a load says
        assert error_lines(result.stderr) == [result.stderr.strip()]
        assert result.stderr.startswith("error: jobs.toml job 1: "), result.stderr
        assert "nobody/not-cached" in result.stderr and "HF_HUB_OFFLINE is set" in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_check_for_plan_leaves_hub_ids_and_pickles_to_the_machine_that_runs(files,
                                                                                tmp_path):
    """`hires plan` may plan another machine's run: what it has cached is not known here."""
    from hires.addons import check_inputs

    check_inputs(Job(control=str(files["control"]), control_model="nobody/not-cached",
                     ip_image=str(files["ip_image"])), loads=False)
    pickled = tmp_path / "net.bin"
    pickled.write_bytes(b"x")
    check_inputs(Job(control=str(files["control"]), control_model=str(pickled)), loads=False)
    with pytest.raises(JobError, match="--control nope.png: no such file"):
        check_inputs(Job(control="nope.png", control_model="owner/net"), loads=False)


# 4. A ControlNet made for another architecture


def test_a_controlnet_whose_config_is_for_another_architecture_says_so(files, tmp_path, asked):
    """diffusers' message was cut off half way through advice on low_cpu_mem_usage."""
    net = tmp_path / "net"
    shutil.copytree(files["control_model"], net)
    config = json.loads((net / "config.json").read_text())
    config["cross_attention_dim"] = 99
    (net / "config.json").write_text(json.dumps(config))
    result = cli("gen", "x", *TINY, *control_flags(files, net), "-o", tmp_path / "x.png")
    # said from the config files before the model loads (it was once loaded: found by QA)
    assert_usage_error(result, f"--control-model {net}: the ControlNet is for another model "
                       "architecture", "cross_attention_dim 99 vs the model's 64",
                       "use an SDXL ControlNet")
    assert asked == []
    # Loaded anyway (a library call of the loader): its weights' words, in one line
    import torch

    from hires.controlnet import ControlError, load_controlnet

    with pytest.raises(ControlError) as loaded:
        load_controlnet(str(net), torch.float32, torch.device("cpu"), False)
    said = str(loaded.value)
    assert "made for another architecture" in said and "use an SDXL ControlNet" in said
    assert "attn2.to_k.weight is 64x64 in its weights, 64x99 by its config" in said
    assert "low_cpu_mem_usage" not in said and "\n" not in said


def test_a_single_file_controlnet_for_another_model_is_refused_before_loading(files, tmp_path,
                                                                            tiny):
    """A single-file ControlNet for another model was found only once SDXL had loaded (noted
    by QA): its cross-attention width is read from its header, in either layout."""
    from diffusers import ControlNetModel
    from helpers_control import tiny_controlnet

    from hires.controlnet import fit_problem

    config = {**tiny_controlnet(tiny.unet).config, "cross_attention_dim": 96}
    state = ControlNetModel.from_config(config).state_dict()
    save_file(state, str(tmp_path / "wide.safetensors"))
    result = cli("gen", "x", *TINY, *control_flags(files, tmp_path / "wide.safetensors"),
                 "--dry-run")
    assert_usage_error(result, f"{tmp_path / 'wide.safetensors'}: the ControlNet is for another "
                       "model architecture", "cross_attention_dim 96 vs the model's 64")
    # SDXL base's plan, its configs not cached yet: they are known (it passed: found by QA)
    planned = cli("plan", "--size", "1024", "--gpu", "h100", "--control", files["control"],
                  "--control-model", tmp_path / "wide.safetensors")
    assert_usage_error(planned, "cross_attention_dim 96 vs the model's 2048")
    # the original layout's names; and one that fits is not refused
    key = next(v for k, v in state.items() if k.endswith("attn2.to_k.weight"))
    save_file({"control_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": key},
              str(tmp_path / "original.safetensors"))
    assert "cross_attention_dim 96" in fit_problem(str(tmp_path / "original.safetensors"), "tiny")
    save_file(tiny_controlnet(tiny.unet).state_dict(), str(tmp_path / "fits.safetensors"))
    assert fit_problem(str(tmp_path / "fits.safetensors"), "tiny") is None


def test_a_dry_run_and_a_batch_refuse_addons_for_another_model(files, tmp_path, tiny):
    """A ControlNet and an IP-Adapter made for another model passed the dry run and a batch's
    checks, and a run found them only once the model had loaded (found by QA)."""
    from helpers_control import tiny_controlnet
    from helpers_ip import write_tiny_ip_adapter

    net = tmp_path / "net"
    config = dict(tiny_controlnet(tiny.unet).config)
    config["cross_attention_dim"] = 96
    from diffusers import ControlNetModel

    ControlNetModel.from_config(config).save_pretrained(net)
    write_tiny_ip_adapter(tmp_path / "wide", tiny.pipe, cross_attention_dim=96)
    control = ["--control", str(files["control"]), "--control-model", str(net)]
    ip = ["--ip-image", str(files["ip_image"]), "--ip-adapter", str(tmp_path / "wide")]
    assert_usage_error(cli("gen", "x", *TINY, *control, "--dry-run"),
                       f"--control-model {net}: the ControlNet is for another model",
                       "cross_attention_dim 96 vs the model's 64")
    assert_usage_error(cli("gen", "x", *TINY, *ip, "--dry-run"),
                       f"IP-Adapter {tmp_path / 'wide'} does not fit this model",
                       "to_k_ip.weight is 64x96 in the file",
                       "cross-attention width 96, 64 in the model's UNet")
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(f'[[job]]\nprompt = "a"\ncontrol = "{files["control"]}"\n'
                    f'control_model = "{net}"\n'
                    f'[[job]]\nprompt = "b"\nip_image = "{files["ip_image"]}"\n'
                    f'ip_adapter = "{tmp_path / "wide"}"\n')
    batch = cli("batch", jobs, "--model", "tiny", "-o", tmp_path / "out", "--dry-run")
    assert batch.exit_code == 2, batch.stderr
    said = error_lines(batch.stderr)
    assert len(said) == 2 and "job 0" in said[0] and "another model architecture" in said[0]
    assert "job 1" in said[1] and "does not fit this model" in said[1], said
    # at scale 0 neither is loaded: not refused
    assert cli("gen", "x", *TINY, *control, "--control-scale", "0", "--dry-run").exit_code == 0


# 5. A folder as an add-on's image


@pytest.mark.parametrize("flag", ["--control", "--ip-image"])
def test_a_folder_as_an_addon_image_says_it_takes_one_image(flag, files, tmp_path, asked):
    """It said 'for every image in it, give DIR/*', `up`'s advice: these take one image."""
    args = ([flag, str(tmp_path), "--control-model", str(files["control_model"])]
            if flag == "--control" else [flag, str(tmp_path)])
    result = cli("gen", "x", *TINY, *args, "--dry-run")
    assert_usage_error(result, f"{flag} {tmp_path} is a folder; {flag} takes one image file")
    assert "DIR/*" not in result.stderr and "give *" not in result.stderr


# 6. --control-scale 0


def test_control_scale_0_runs_no_controlnet_and_keeps_it_in_the_record(files, tmp_path,
                                                                         asked, tiny,
                                                                         monkeypatch):
    """It ran the ControlNet every step (twice the work) for the plain image's pixels."""
    from hires import controlnet

    loaded = []
    real = controlnet.load_controlnet
    monkeypatch.setattr(controlnet, "load_controlnet",
                        lambda *a, **k: loaded.append(a) or real(*a, **k))
    tiny.controlnets.clear()
    plain, zero = tmp_path / "plain.png", tmp_path / "zero.png"
    assert cli("gen", "x", *TINY, "-o", plain).exit_code == 0
    made = cli("gen", "x", *TINY, *control_flags(files, scale="0"), "-o", zero, "--json")
    assert made.exit_code == 0, made.stderr
    assert loaded == [] and not tiny.controlnets
    with Image.open(plain) as a, Image.open(zero) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))
    record = json_lines(made.stdout)[0]["addons"]["controlnet"]
    # --from repeats it; its weights made nothing of the image: not hashed, nor compared
    assert record["scale"] == 0 and "sha256" not in record


@pytest.mark.parametrize("flags", [
    ("--control", "{control}", "--control-model", "addon", "--control-scale", "0"),
    ("--ip-image", "{ip_image}", "--ip-adapter", "addon", "--ip-scale", "0")])
def test_from_an_image_made_at_scale_0_needs_no_addon_it_did_not_run(flags, files, tmp_path,
                                                                      asked, monkeypatch):
    """Its local add-on, gone since, was asked for (found by QA): a Hub one not cached was
    not. Named bare, with './' or whole."""
    monkeypatch.chdir(tmp_path)
    for ref in ("addon", "./addon", str(tmp_path / "addon")):
        shutil.copytree(files["control_model" if "--control" in flags else "ip"], "addon")
        given = [ref if f == "addon" else f.format(**files) for f in flags]
        assert cli("gen", "x", *TINY, *given, "-o", "made.png", "--overwrite").exit_code == 0
        shutil.rmtree("addon")
        again = cli("gen", "--from", "made.png", "-o", "again.png", "-q", "--overwrite")
        assert again.exit_code == 0, (ref, again.stderr)
        with Image.open("made.png") as a, Image.open("again.png") as b:
            assert np.array_equal(np.asarray(a), np.asarray(b))
        scale = flags[-2]  # run now, it needs its add-on: said so
        refused = cli("gen", "--from", "made.png", "-o", "on.png", "-q", scale, "0.5")
        assert refused.exit_code == 2 and "addon" in refused.stderr, refused.stderr


@pytest.mark.parametrize("addon", [
    dict(ip_image="ip_image", ip_scale=0),  # the default h94/IP-Adapter
    dict(control="control", control_model="xinsir/controlnet-tile-sdxl-1.0", control_scale=0)])
def test_a_hub_addon_at_scale_0_need_not_be_cached(addon, files, tiny):
    """It is not loaded, yet offline its missing cache raised ModelError before the run."""
    from hires import generate

    named = {k: str(files[v]) if k in ("ip_image", "control") else v for k, v in addon.items()}
    plain = generate("x", components=tiny, width=256, height=256, steps=1, seed=5)
    zero = generate("x", components=tiny, width=256, height=256, steps=1, seed=5, **named)
    assert np.array_equal(np.asarray(plain.image), np.asarray(zero.image))
    assert set(zero.addons) == {"ip_adapter" if "ip_image" in addon else "controlnet"}


def test_control_scale_0_counts_no_controlnet_work():
    from hires.addons import runs_controlnet

    assert runs_controlnet(Job(control="c.png", control_model="net", control_scale=0.5))
    assert not runs_controlnet(Job(control="c.png", control_model="net", control_scale=0))
    assert not runs_controlnet(Job())


# 7. What fitting a control image leaves out


def test_a_transparent_or_far_off_aspect_control_image_is_said(files, tmp_path):
    from hires.addons import input_warnings

    rgba, strip = tmp_path / "rgba.png", tmp_path / "strip.png"
    pixels = np.asarray(Image.open(files["control"]))
    alpha = np.full((96, 96, 1), 128, np.uint8)
    Image.fromarray(np.dstack([pixels, alpha])).save(rgba)
    Image.fromarray(np.tile(pixels, (1, 10, 1))[:20]).save(strip)  # 960x20
    common = dict(width=256, height=256, control_model="net")
    assert input_warnings(Job(control=str(files["control"]), **common)) == []
    said = input_warnings(Job(control=str(rgba), ip_image=str(rgba), **common))
    assert len(said) == 2 and all("has transparency" in s for s in said)
    assert "the ControlNet does not see" in said[0] and "--ip-image" in said[1]
    said = input_warnings(Job(control=str(strip), **common))
    assert said == [f"--control {strip} (960x20) is scaled to cover the 256x256 image and "
                    "centre-cropped: 98% of it is cut off; give a control image of the "
                    "image's aspect"]
    # A third or less cut off (96x72 onto a square) is what fitting is for: not said.
    Image.fromarray(pixels[:72]).save(strip)
    assert input_warnings(Job(control=str(strip), **common)) == []
    # Not run at scale 0: nothing to say.
    assert input_warnings(Job(control=str(rgba), control_scale=0, **common)) == []


def test_a_batch_says_a_control_images_warning_by_its_key(files, tmp_path, asked):
    """A batch's dry run and run said 'job 0: --control ...', a flag it has none of (found by
    QA)."""
    strip = tmp_path / "strip.png"
    Image.fromarray(np.tile(np.asarray(Image.open(files["control"])), (1, 10, 1))[:20]).save(strip)
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(f'[[job]]\nprompt = "a"\nwidth = 256\nheight = 256\nsteps = 1\n'
                    f'control = "{strip}"\ncontrol_model = "{files["control_model"]}"\n')
    said = f"'control' in jobs.toml job 0: {strip} (960x20) is scaled to cover"
    for extra in (["--dry-run"], []):
        result = cli("batch", jobs, "--model", "tiny", "-o", tmp_path / "out", *extra)
        assert result.exit_code == 0, result.stderr
        assert f"warning: {said}" in result.stderr and "--control" not in result.stderr
        # and in its --json line (the run's said the flag), and the manifest's
        row = json_lines(cli("batch", jobs, "--model", "tiny", "-o", tmp_path / "out",
                             "--json", "--overwrite", *extra).stdout)[0]
        assert [w for w in row["warnings"] if said in w], row
    # A [defaults] image's warning differs from job to job: it names the job too
    jobs.write_text(f'[defaults]\ncontrol = "{strip}"\ncontrol_model = '
                    f'"{files["control_model"]}"\nsteps = 1\n'
                    '[[job]]\nprompt = "a"\nwidth = 256\nheight = 256\n'
                    '[[job]]\nprompt = "b"\nwidth = 512\nheight = 256\n')
    dry = cli("batch", jobs, "--model", "tiny", "-o", tmp_path / "out2", "--dry-run")
    for i, size in enumerate(("256x256", "512x256")):
        assert (f"warning: 'control' in jobs.toml [defaults] (jobs.toml job {i}): {strip} "
                f"(960x20) is scaled to cover the {size} image") in dry.stderr, dry.stderr


# Wired by the lead in files outside the add-ons' (hires/cli.py's plan, hires/dry_run.py and
# hires.pipeline.shape_for, hires.pipeline.prompt_warnings): strict, so each says when it holds.
def test_plan_checks_the_addons_as_a_dry_run_does(files):
    result = cli("plan", "--model", "tiny", "--size", "256", "--control", "nope.png",
                 "--control-model", str(files["control_model"]))
    assert_usage_error(result, "--control nope.png: no such file")


def test_the_plan_counts_no_controlnet_at_scale_0(files):
    common = ("plan", "--model", "tiny", "--size", "512", "--json")
    plain = json.loads(cli(*common).stdout)["stages"]
    zero = cli(*common, *control_flags(files, scale="0"))
    assert zero.exit_code == 0, zero.stderr
    assert [s["tflop"] for s in json.loads(zero.stdout)["stages"]] == [s["tflop"] for s in plain]


def test_the_plan_counts_an_ip_adapters_weights(files, tiny):
    """The plan's peak and time were the same with an IP-Adapter as without (found by QA);
    SDXL's adds the Hub file's 351 M parameters (703 MB in fp16) to the UNet's."""
    from hires.costs import sdxl_shape
    from hires.pipeline import shape_for
    from hires.unet_costs import with_ip_adapter

    plain = sdxl_shape().unet
    assert with_ip_adapter(plain, 2).param_bytes - plain.param_bytes == 2 * 351_285_248
    common = ("plan", "--size", "1024", "--gpu", "h100", "--json")
    ip = ("--ip-image", str(files["ip_image"]))
    peaks = [json.loads(cli(*common, *extra).stdout)["stages"][0]["peak_bytes"]
             for extra in ((), ip, (*ip, "--ip-scale", "0"))]
    assert peaks[1] - peaks[0] == 2 * 351_285_248 and peaks[2] == peaks[0]
    # A run's plan, from the loaded model, before the adapter is attached
    job = Job(prompt="a", model="tiny", ip_image=str(files["ip_image"]),
              ip_adapter=str(files["ip"]))
    with_ip, without = (shape_for(j, tiny).unet for j in (job, Job(prompt="a", model="tiny")))
    projection = sum(t.numel() for name, t in load_file(files["ip"] / WEIGHT_NAME).items()
                     if name.startswith("image_proj."))
    assert with_ip == with_ip_adapter(without, tiny.dtype.itemsize, projection) != without


def test_the_plan_counts_a_plus_adapters_projection_from_its_file(files, tmp_path):
    """A "plus" IP-Adapter's Resampler is ten times the plain adapter's projection: it was
    planned as the plain one, 145 MB short (found by QA). The plan reads its file's header."""
    from hires.ip_adapter import projection_params

    folder = tmp_path / "plus"
    shutil.copytree(files["ip"] / "image_encoder", folder / "image_encoder")
    resampler = {"image_proj.latents": torch.zeros(1, 16, 64),
                 "image_proj.layers.0.1.to_kv.weight": torch.zeros(128, 4096),
                 "image_proj.proj_out.weight": torch.zeros(2048, 64),
                 "ip_adapter.1.to_k_ip.weight": torch.zeros(8, 2048)}
    save_file({k: v.half() for k, v in resampler.items()}, str(folder / WEIGHT_NAME))
    size = 1024 + 128 * 4096 + 2048 * 64
    assert projection_params(str(folder)) == size
    assert projection_params("h94/IP-Adapter") is None
    common = ("plan", "--size", "1024", "--gpu", "h100", "--json", "--ip-image",
              str(files["ip_image"]))
    hub, plus = (json.loads(cli(*common, *extra).stdout)["stages"][0]["peak_bytes"]
                 for extra in ((), ("--ip-adapter", str(folder))))
    plain = (1280 + 1) * 4 * 2048 + 2 * 2048  # the Hub file's projection, its bias and norm
    assert plus - hub == 2 * (size - plain)


def test_the_plan_counts_a_pickled_plus_adapters_projection_where_pickle_is_allowed(files,
                                                                                   tmp_path):
    """A "plus" adapter as a pickle (.bin, as torch.save wrote the Hub's) was still planned as
    the plain one: its tensors are read on the meta device, only with --allow-pickle."""
    from hires.ip_adapter import projection_params

    folder = tmp_path / "plus"
    shutil.copytree(files["ip"] / "image_encoder", folder / "image_encoder")
    torch.save({"image_proj": {"latents": torch.zeros(1, 16, 64).half(),
                               "proj_out.weight": torch.zeros(2048, 64).half()},
                "ip_adapter": {"1.to_k_ip.weight": torch.zeros(8, 2048).half()}},
               folder / "ip-adapter_sdxl.bin")
    size = 1024 + 2048 * 64
    assert projection_params(str(folder), allow_pickle=True) == size
    assert projection_params(str(folder)) is None  # not unpickled without leave
    (folder / "ip-adapter_sdxl.bin").write_bytes(b"not a pickle")
    assert projection_params(str(folder), allow_pickle=True) is None
    # a named pipe of that name hung the plan in torch.load (found by QA)
    (folder / "ip-adapter_sdxl.bin").unlink()
    os.mkfifo(folder / "ip-adapter_sdxl.bin")
    assert projection_params(str(folder), allow_pickle=True) is None


def test_gen_says_a_transparent_control_image_once(files, tmp_path, asked):
    rgba = tmp_path / "rgba.png"
    pixels = np.asarray(Image.open(files["control"]))
    Image.fromarray(np.dstack([pixels, np.full((96, 96, 1), 128, np.uint8)])).save(rgba)
    result = cli("gen", "x", *TINY, "--control", rgba, "--control-model",
                 files["control_model"], "--n", "2", "-o", tmp_path / "{index}.png")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("has transparency") == 1, result.stderr


# 8. The loaded ControlNet is the one the reference names now


def control_run(files, tiny, model: str):
    """A 256x256 one-step image with the ControlNet `model` (the API's words) on `tiny`."""
    from hires import generate

    return generate("x", components=tiny, width=256, height=256, steps=1, seed=5,
                    control=str(files["control"]), control_model=model)


def pixels_of(result) -> np.ndarray:
    return np.asarray(result.image).astype(int)


def test_a_controlnet_saved_over_or_named_from_another_folder_is_loaded_anew(files, tmp_path,
                                                                             tiny, monkeypatch):
    """The cache was keyed by the words: the old weights ran while the record hashed the new
    file (so --from made another image), and "net" after a chdir was the old folder's."""
    from helpers_cli import sha256

    net = tmp_path / "net"
    shutil.copytree(files["control_model"], net)
    monkeypatch.chdir(tmp_path)
    tiny.controlnets.clear()
    first = pixels_of(control_run(files, tiny, "net"))
    retrained(net, tiny)
    again = control_run(files, tiny, "net")
    assert again.addons["controlnet"]["sha256"] == sha256(
        net / "diffusion_pytorch_model.safetensors")
    tiny.controlnets.clear()
    fresh = pixels_of(control_run(files, tiny, "net"))
    assert np.abs(first - fresh).mean() > 0.5  # (the new weights make another image)
    assert np.array_equal(pixels_of(again), fresh)
    # "net" read from another folder is that folder's ControlNet: the first weights
    (tmp_path / "other").mkdir()
    shutil.copytree(files["control_model"], tmp_path / "other" / "net")
    monkeypatch.chdir(tmp_path / "other")
    assert np.array_equal(pixels_of(control_run(files, tiny, "net")), first)


def test_a_lora_at_scale_0_is_not_compared(files, tmp_path, asked, tiny):
    """It adds nothing to the image, yet an edit of its file refused --from, remade batch
    images and threw away checkpoints."""
    from helpers_lora import write_tiny_lora

    from hires import resume

    lora = tmp_path / "off.safetensors"
    shutil.copy(files["lora"], lora)
    first = tmp_path / "first.png"
    made = cli("gen", "x", *TINY, "--lora", f"{lora}:0", "-o", first)
    assert made.exit_code == 0, made.stderr
    write_tiny_lora(lora, tiny.pipe, seed=9)
    again = cli("gen", "--from", first, "-o", tmp_path / "again.png", "-q")
    assert again.exit_code == 0, again.stderr
    job = Job(prompt="x", model="tiny", lora=[f"{lora}:0", f"{files['lora']}:0.5"])
    assert [path for path, _ in resume._addon_inputs(job)] == [files["lora"]]


def test_a_relative_file_that_differs_may_be_another_folders(files, tmp_path, asked, tiny,
                                                             monkeypatch):
    """Run from another folder, --from called another file of the same name an edit."""
    from helpers_lora import write_tiny_lora

    made_in, elsewhere = tmp_path / "a", tmp_path / "b"
    made_in.mkdir()
    elsewhere.mkdir()
    shutil.copy(files["lora"], made_in / "s.safetensors")
    write_tiny_lora(elsewhere / "s.safetensors", tiny.pipe, seed=9)
    monkeypatch.chdir(made_in)
    made = cli("gen", "x", *TINY, "--lora", "s.safetensors", "-o", tmp_path / "x.png")
    assert made.exit_code == 0, made.stderr
    monkeypatch.chdir(elsewhere)
    result = cli("gen", "--from", tmp_path / "x.png", "-o", tmp_path / "y.png", "-q")
    assert_usage_error(result, "s.safetensors has changed since this image was made",
                       "read in another folder than the one the image was made in")


def test_a_stage_image_records_its_addons_for_from(files, tmp_path, asked, tiny):
    """--from a stage image (the README's preview workflow) ran a changed LoRA without a word:
    stage images recorded no add-on sha256 (found by QA). Saved as the run goes, or by
    Result.save, they record what the image's own record does."""
    from helpers_lora import write_tiny_lora

    from hires import generate

    lora = tmp_path / "s.safetensors"
    shutil.copy(files["lora"], lora)
    made = cli("gen", "x", "--model", "tiny", "--size", "512", "--steps", "1", "--seed", "5",
               "-q", "--lora", lora, "--save-stages", "-o", tmp_path / "x.png")
    assert made.exit_code == 0, made.stderr
    result = generate("x", components=tiny, width=512, height=512, steps=1, seed=5,
                      lora=[str(lora)], save_stages=True)
    result.save(tmp_path / "lib.png", save_stages=True)
    for stage in ("x.stage0.png", "lib.stage0.png"):
        recorded = json.loads(cli("info", tmp_path / stage, "--json").stdout)
        assert recorded["result"]["addons"] == result.addons != {}, stage
    write_tiny_lora(lora, tiny.pipe, seed=9)
    for stage in ("x.stage0.png", "lib.stage0.png"):
        refused = cli("gen", "--from", tmp_path / stage, "--dry-run")
        assert refused.exit_code == 2, refused.stderr
        assert "s.safetensors has changed since this image was made" in \
            " ".join(error_lines(refused.stderr))
