"""Follow-ups of the add-on and file checks found by QA (tiny model, offline): --from reruns a
scale-0 add-on's record whatever became of its files (it made nothing of them), and records no
sha256 of a scale-0 ControlNet; a dry run exits 1 for an uncached Hub model as the run does; a
truncated .safetensors is refused as truncated; a dry run says what fitting the add-on images
leaves out, and that a scale-0 ControlNet is not run."""

import json

import numpy as np
import pytest
import torch
from helpers_cli import cli, error_lines, json_lines
from PIL import Image
from safetensors.torch import save_file

from hires.job import Job, JobError

TINY = ("--model", "tiny", "--size", "256", "--steps", "1", "--seed", "5", "-q")
OTHER = "0" * 64  # a recorded sha256 no file here has


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny):
    from helpers_control import tiny_controlnet

    root = tmp_path_factory.mktemp("followups")
    pixels = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "edges.png")
    Image.fromarray(np.tile(pixels, (1, 10, 1))[:20]).save(root / "strip.png")  # 960x20
    tiny_controlnet(tiny.unet).save_pretrained(root / "control-net")
    return {"control": root / "edges.png", "strip": root / "strip.png",
            "control_model": root / "control-net", "root": root}


# 1. --from and add-ons at scale 0


def test_from_compares_no_file_of_an_addon_at_scale_0(files):
    """It refused to rerun a --control-scale 0 (or --ip-scale 0) record because the
    ControlNet, its image or the IP-Adapter's image changed: none of them made the image."""
    from hires.addons import check_unchanged

    control, net = str(files["control"]), str(files["control_model"])
    recorded = {"controlnet": {"model": net, "image": control, "image_sha256": OTHER,
                               "sha256": OTHER},
                "ip_adapter": {"ref": "h94/IP-Adapter", "image": control,
                               "image_sha256": OTHER}}
    zero = Job(control=control, control_model=net, control_scale=0, ip_image=control,
               ip_scale=0)
    check_unchanged(zero, recorded)  # nothing to compare: no error
    with pytest.raises(JobError, match="has changed"):
        check_unchanged(Job(control=control, control_model=net, control_scale=0.5), recorded)
    with pytest.raises(JobError, match="--ip-image"):
        check_unchanged(Job(ip_image=control, ip_scale=0.5), recorded)
    # `up`'s input is its input at any scale: still compared.
    up = {"controlnet": {"model": net, "image": control, "image_sha256": OTHER}}
    with pytest.raises(JobError, match="give it yourself"):
        check_unchanged(Job(image=control, control_model=net, control_scale=0), up)


def test_a_scale_0_controlnet_is_recorded_without_hashing_its_weights(files, tmp_path, asked,
                                                                     monkeypatch):
    from hires import controlnet

    hashed = []
    real = controlnet.weights_sha256
    monkeypatch.setattr(controlnet, "weights_sha256",
                        lambda *a, **k: hashed.append(a) or real(*a, **k))
    made = cli("gen", "x", *TINY, "--control", files["control"], "--control-model",
               files["control_model"], "--control-scale", "0", "-o", tmp_path / "a.png",
               "--json")
    assert made.exit_code == 0, made.stderr
    record = json_lines(made.stdout)[0]["addons"]["controlnet"]
    assert record["scale"] == 0 and "sha256" not in record
    assert hashed == []


# 2. An uncached Hub model in a dry run: exit 1, as the run


def test_a_dry_run_exits_1_for_an_uncached_hub_model_as_the_run_does(tmp_path, monkeypatch):
    from huggingface_hub import constants

    (tmp_path / "hf").mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    result = cli("gen", "x", "--model", "owner/not-cached", "--size", "256", "--dry-run")
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert error_lines(result.stderr) == [result.stderr.strip()]
    assert "'owner/not-cached'" in result.stderr and "not in the local" in result.stderr


# 3. A truncated .safetensors


def cut_short(path, keys) -> tuple[int, int]:
    """Write a safetensors file of `keys` at `path`, then drop its last 8 bytes (an
    interrupted download); returns its size now and whole."""
    save_file({k: torch.zeros(4, 4) for k in keys}, path)
    data = path.read_bytes()
    path.write_bytes(data[:-8])
    return len(data) - 8, len(data)


def test_read_header_refuses_a_truncated_file_and_says_by_how_much(tmp_path):
    from hires.safetensors_header import read_header, truncated

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(4, 4)}, path)
    assert read_header(path) is not None and truncated(path) is None
    have, whole = cut_short(path, ["a"])
    assert read_header(path) is None
    assert read_header(path, whole=False)["a"]["shape"] == [4, 4]  # (`hires info`'s metadata)
    assert truncated(path) == f"truncated ({have} of {whole} bytes); re-download it"


def test_a_truncated_checkpoint_or_lora_is_refused_as_truncated(tmp_path):
    model, lora = tmp_path / "sdxl.safetensors", tmp_path / "lora.safetensors"
    have, whole = cut_short(model, ["model.diffusion_model.input_blocks.0.0.weight",
                                    "conditioner.embedders.0.transformer.x"])
    said = f"truncated ({have} of {whole} bytes); re-download it"
    result = cli("gen", "x", "--model", model, "--size", "256", "--dry-run")
    assert result.exit_code != 0 and said in result.stderr, result.stderr
    have, whole = cut_short(lora, ["lora_unet_x.lora_down.weight"])
    result = cli("gen", "x", *TINY, "--lora", lora, "--dry-run")
    assert result.exit_code == 2, result.stderr
    assert f"truncated ({have} of {whole} bytes)" in result.stderr


def test_a_truncated_weight_in_a_model_folder_or_linfusion_checkpoint_is_said(tmp_path,
                                                                             tiny_folder):
    import shutil

    from hires import linfusion
    from hires.model_refs import pipeline_folder_refusal

    folder = shutil.copytree(tiny_folder, tmp_path / "model")
    weights = next((folder / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-4])
    assert "truncated (" in pipeline_folder_refusal(folder)
    check = tmp_path / "lf"
    check.mkdir()
    (check / linfusion.CONFIG_NAME).write_text(json.dumps({
        "_class_name": "LinFusion", "modules_list": [{
            "module_name": "down_blocks.1.attentions.0.transformer_blocks.0.attn1",
            "dim_n": 64, "heads": 1, "projection_mid_dim": 8}]}))
    cut_short(check / linfusion.WEIGHTS_NAME, ["a"])
    with pytest.raises(linfusion.LinFusionError, match="truncated"):
        linfusion.check_ref(check)


# 4. and 5. What a dry run says of the add-ons


def test_a_dry_run_says_a_far_off_control_image_once(files):
    result = cli("gen", "x", *TINY, "--n", "2", "--control", files["strip"],
                 "--control-model", files["control_model"], "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("centre-cropped: 98% of it is cut off") == 1, result.stderr


def test_the_settings_line_says_a_scale_0_controlnet_is_not_run(files):
    def settings(scale):
        result = cli("gen", "x", *TINY[:-1], "--control", files["control"], "--control-model",
                     files["control_model"], "--control-scale", scale, "--dry-run")
        assert result.exit_code == 0, result.stderr
        return next(line for line in result.stdout.splitlines() if line.startswith("settings"))

    assert f"controlnet {files['control_model']} at scale 0 (not run)" in settings("0")
    assert "not run" not in settings("1")


def test_a_truncated_single_file_controlnet_says_so(tmp_path):
    import os

    import torch
    from safetensors.torch import save_file

    from hires.controlnet import local_problem

    path = tmp_path / "cn.safetensors"
    save_file({"controlnet_cond_embedding.conv_in.weight": torch.zeros(1000)}, path)
    os.truncate(path, path.stat().st_size - 100)
    assert local_problem(str(path)) == \
        f"cn.safetensors is truncated ({path.stat().st_size} of {path.stat().st_size + 100} " \
        "bytes); re-download it"


def test_a_batch_dry_run_lists_a_job_whose_model_is_not_here(tmp_path, monkeypatch):
    """An uncached Hub model ended the whole dry run at that job; now it is listed, the other
    jobs too, and the exit is 1 as the run's would be (2 stays for a setting to fix)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    jobs = tmp_path / "jobs.toml"
    jobs.write_text('[[job]]\nprompt = "a"\nmodel = "someone/not-cached"\n'
                    '[[job]]\nprompt = "b"\nmodel = "tiny"\nsize = 64\n')
    result = cli("batch", str(jobs), "-o", str(tmp_path / "out"), "--dry-run")
    assert result.exit_code == 1, result.stderr
    assert "error: job 0 cannot run: model 'someone/not-cached' is not in the local cache" in \
        result.stderr and "job 0" not in result.stdout  # said once, as an error
    assert "job 1: 64x64" in result.stdout and "1 to make; 0 made already; 1 cannot run" in \
        result.stdout


def test_an_ip_adapter_at_scale_0_is_not_loaded_and_changes_nothing(tmp_path, tiny, asked):
    """It was loaded and its weights hashed for every job, to add nothing."""
    from helpers_ip import write_tiny_ip_adapter

    write_tiny_ip_adapter(tmp_path / "ip", tiny.pipe)
    Image.new("RGB", (64, 64), "red").save(tmp_path / "style.png")
    common = ("gen", "a cat", "--model", "tiny", "--size", "64", "--steps", "1", "--seed", "3",
              "--json")
    off = cli(*common, "--ip-image", tmp_path / "style.png", "--ip-adapter", tmp_path / "ip",
              "--ip-scale", "0", "-o", tmp_path / "off.png")
    assert off.exit_code == 0, off.stderr
    record = json.loads(off.stdout)["addons"]["ip_adapter"]
    assert record["scale"] == 0 and "sha256" not in record
    plain = cli(*common, "-o", tmp_path / "plain.png")
    assert plain.exit_code == 0, plain.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "off.png")),
                          np.asarray(Image.open(tmp_path / "plain.png")))


def test_plan_of_the_tiny_model_with_a_hub_linfusion_plans_without_its_checkpoint():
    """It loaded the named checkpoint for the shapes, so an uncached one was refused (exit 1)
    where a plan for another machine should plan."""
    common = ("plan", "a cat", "--model", "tiny", "--size", "128", "--json")
    named = cli(*common, "--linfusion", "someone/linfusion-tiny")
    assert named.exit_code == 0, named.stderr
    own = cli(*common)
    assert json.loads(named.stdout)["stages"] == json.loads(own.stdout)["stages"]
