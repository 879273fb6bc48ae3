"""A dry run (and `hires plan`) checks that a model, VAE or LinFusion checkpoint can be used,
not only that its path exists: what cannot load fails there, or at the start of a run,
in one line, not after SDXL loaded (minutes)."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from helpers_cli import assert_usage_error, cli, run_hires
from PIL import Image
from safetensors.torch import load_file, save_file

import hires.linfusion
import hires.model_refs
import hires.models
from hires.model_refs import ModelError

SMALL = ("--size", "256", "--steps", "1")


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline (huggingface_hub reads both at import)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


# A LinFusion checkpoint whole in the cache: its config and weights (their bytes unread)
WHOLE_LINFUSION = {"config.json": "{}", "diffusion_pytorch_model.safetensors": ""}


def cache_repo(cache: Path, repo: str, files: dict[str, str]) -> None:
    """`repo`'s `files` in the cache's layout, as a download leaves them."""
    root = cache / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    for name, text in files.items():
        path = root / "snapshots" / commit / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def copy_of(tmp_path, tiny_folder):
    """A copy of the tiny model's folder, to break."""
    return Path(shutil.copytree(tiny_folder, tmp_path / "model"))


def dry(*args):
    return cli("gen", "a fox", *SMALL, *args, "--dry-run")


# --- 1: a Hub id that is not cached while offline ---------------------------------------------

@pytest.mark.parametrize("flag, words", [
    ("--vae", ("VAE 'owner/not-cached'", "--vae")),
    ("--linfusion", ("LinFusion checkpoint owner/not-cached", "--linfusion none")),
    ("--model", ("model 'owner/not-cached'", "--model tiny")),
])
def test_an_uncached_hub_id_fails_the_dry_run_when_offline(empty_cache, tiny_folder, flag,
                                                           words):
    args = ("--model", tiny_folder, flag, "owner/not-cached")
    if flag == "--model":
        args = (flag, "owner/not-cached")
    result = dry(*args)  # exit 1, as the run's load says (the machine's state, not usage)
    assert result.exit_code == 1 and result.stdout == "", (result.stdout, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for word in ("not in the local", "HF_HUB_OFFLINE is set", *words):
        assert word in result.stderr, result.stderr
    # `hires plan` plans for any machine: what this one has cached is not its business.
    planned = cli("plan", "a fox", "--size", "1024", *args)
    assert planned.exit_code == 0, planned.stderr


def test_a_cached_hub_id_passes_and_the_default_model_is_planned(empty_cache, tiny_folder,
                                                                 tmp_path):
    cache_repo(empty_cache, "owner/vae", {"vae/config.json": "{}"})
    assert hires.model_refs.hub_cached("owner/vae", "config.json", "vae/config.json")
    hires.model_refs.check_cached(str(tiny_folder), "owner/vae", "none")
    with pytest.raises(ModelError, match="not in the local cache"):
        hires.model_refs.check_cached("owner/model", None, "none")
    # The default model (and its LinFusion) are planned from their known shapes, and a run
    # here would stop on them: said as a warning (it passed without a word).
    result = cli("gen", "a fox", "--size", "1024", "--dry-run")
    assert result.exit_code == 0, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "would stop" in line]
    assert line.startswith("warning: a run here would stop: model 'stabilityai/stable-diffusion"
                           "-xl-base-1.0' is not in the local cache and HF_HUB_OFFLINE is set")
    for name in ("a.png", "b.png"):  # `up` plans each input; the model loads once
        Image.new("RGB", (64, 48)).save(tmp_path / name)
    result = cli("up", tmp_path / "a.png", tmp_path / "b.png", "--scale", "2", "--dry-run",
                 "-o", f"{tmp_path}/")
    assert result.exit_code == 0 and result.stderr.count(line) == 1, result.stderr
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    result = cli("batch", jobs, "--dry-run", "-o", tmp_path / "b")
    assert result.exit_code == 0 and result.stderr.count(line) == 1, result.stderr
    cache_repo(empty_cache, hires.model_refs.DEFAULT_MODEL, {"model_index.json": "{}"})
    linfusion = hires.linfusion.DEFAULT_CHECKPOINTS[hires.model_refs.DEFAULT_MODEL]
    cache_repo(empty_cache, linfusion, WHOLE_LINFUSION)
    for args in ((), ("--gpu", "h100")):  # cached; planned for another machine
        result = cli("gen", "a fox", "--size", "1024", "--dry-run", *args)
        assert result.exit_code == 0 and "would stop" not in result.stderr, result.stderr


def test_an_offline_hub_fine_tune_is_told_its_linfusion_is_not_cached(empty_cache):
    """--linfusion auto takes LinFusion-XL for any SDXL UNet, but the offline check looked the
    checkpoint up by the Hub id alone: a fine-tune's id passed, and its load failed once SDXL
    had loaded."""
    from hires.model_refs import check_cached
    from hires.sdxl import SDXL_UNET_CONFIG

    cache_repo(empty_cache, "owner/sdxl-ft", {"model_index.json": "{}",
                                              "unet/config.json": json.dumps(SDXL_UNET_CONFIG)})
    linfusion = hires.linfusion.DEFAULT_CHECKPOINTS[hires.model_refs.DEFAULT_MODEL]
    with pytest.raises(ModelError, match=f"LinFusion checkpoint {linfusion} .*auto takes"):
        check_cached("owner/sdxl-ft", None, "auto")
    check_cached("owner/sdxl-ft", None, "none")
    cache_repo(empty_cache, linfusion, WHOLE_LINFUSION)
    check_cached("owner/sdxl-ft", None, "auto")


def test_a_hub_linfusion_cut_short_in_the_cache_fails_the_dry_run_as_the_run(empty_cache,
                                                                           tiny_folder):
    """Its config cached and not its weights (a download stopped) passed the dry run; the
    run then said 'no diffusion_pytorch_model.safetensors; LinFusion checkpoints load from
    safetensors only', as if the checkpoint had none."""
    cache_repo(empty_cache, "owner/lf", {"config.json": json.dumps(
        {"_class_name": "LinFusion", "modules_list": [{"module_name": "a.attn1", "dim_n": 64,
                                                        "heads": 2}]})})
    said = ("LinFusion checkpoint owner/lf is only partly in the local Hugging Face cache (its "
            "diffusion_pytorch_model.safetensors is missing: a download cut short?); "
            "HF_HUB_OFFLINE is set; unset it to finish it")
    result = dry("--model", tiny_folder, "--linfusion", "owner/lf")
    assert result.exit_code == 1 and said in result.stderr, result.stderr
    with pytest.raises(hires.linfusion.LinFusionError, match=re.escape(said)):
        hires.linfusion.LinFusion.load("owner/lf")


def test_a_cached_hub_model_no_linfusion_fits_is_refused_before_it_loads(empty_cache, tiny):
    """A folder whose UNet no LinFusion checkpoint fits was refused at once; the same model
    as a cached Hub id passed the dry run and failed once the whole model had loaded."""
    snapshot = empty_cache / "models--owner--tinyft" / "snapshots" / ("0" * 40)
    (empty_cache / "models--owner--tinyft" / "refs").mkdir(parents=True)
    (empty_cache / "models--owner--tinyft" / "refs" / "main").write_text("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "unet").mkdir()
    (snapshot / "unet" / "config.json").write_text(json.dumps(dict(tiny.unet.config)))
    result = cli("gen", "x", "--model", "owner/tinyft", "--size", "256", "--dry-run")
    assert_usage_error(result, "no LinFusion checkpoint is known for 'owner/tinyft'",
                       "--linfusion none")


def test_a_cached_hub_controlnet_lacking_weights_is_a_load_failure(empty_cache, tiny):
    """Its cache's copy is broken, not the option: exit 1 (as a model's or a VAE's), where a
    folder's is the user's to fix (exit 2)."""
    from helpers_control import tiny_controlnet

    from hires.controlnet import load_controlnet

    snapshot = empty_cache / "models--owner--cn" / "snapshots" / ("0" * 40)
    (empty_cache / "models--owner--cn" / "refs").mkdir(parents=True)
    (empty_cache / "models--owner--cn" / "refs" / "main").write_text("0" * 40)
    tiny_controlnet(tiny.unet).save_pretrained(snapshot)
    file = snapshot / "diffusion_pytorch_model.safetensors"
    save_file({k: v for k, v in load_file(file).items()
               if not k.startswith("controlnet_cond_embedding.")}, file)
    with pytest.raises(ModelError, match="ControlNet 'owner/cn' lacks .* download it again"):
        load_controlnet("owner/cn", torch.float32)


def test_a_bad_vae_or_linfusion_fails_before_the_model_loads(empty_cache, tiny_folder,
                                                             monkeypatch, tmp_path):
    def loading(*args, **kwargs):
        raise AssertionError("the model was loaded first")

    monkeypatch.setattr(hires.models, "load_pipeline", loading)
    result = cli("gen", "a fox", *SMALL, "--model", tiny_folder, "--vae", "owner/not-cached",
                 "-o", tmp_path / "x.png")
    assert result.exit_code == 1, result.stderr
    assert "VAE 'owner/not-cached' is not in the local cache" in result.stderr
    assert "loaded first" not in result.stderr
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    for kwargs, words in [({"vae": "owner/not-cached"}, "not in the local cache"),
                          ({"linfusion": "owner/not-cached"}, "not in the local"),
                          ({"vae": str(broken)}, "not a valid safetensors file"),
                          ({"linfusion": str(tiny_folder)}, "linfusion")]:
        with pytest.raises(ModelError, match=words):
            hires.models.load(str(tiny_folder), device="cpu", **kwargs)


# --- 2: a LinFusion folder that is not one -----------------------------------------------------

def test_a_linfusion_folder_that_cannot_load_fails_the_dry_run(tiny_folder, tmp_path):
    model = ("--model", tiny_folder)
    # The model's folder itself: its checkpoint is in linfusion/ inside.
    assert_usage_error(dry(*model, "--linfusion", tiny_folder), "no config.json",
                       f"--linfusion {tiny_folder}/linfusion")
    corrupt = Path(shutil.copytree(tiny_folder / "linfusion", tmp_path / "lf"))
    (corrupt / "diffusion_pytorch_model.safetensors").write_bytes(b"\xff" * 64)
    assert_usage_error(dry(*model, "--linfusion", corrupt), "not a valid safetensors file")
    config = corrupt / "config.json"
    assert_usage_error(dry(*model, "--linfusion", config), "is a file",
                       "pass the folder holding config.json")
    config.write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    assert_usage_error(dry(*model, "--linfusion", corrupt), "not a LinFusion checkpoint")
    ok = dry(*model, "--linfusion", tiny_folder / "linfusion")
    assert ok.exit_code == 0, ok.stderr


# --- 3: a single file that is no SDXL checkpoint -----------------------------------------------

def test_a_single_file_that_is_no_sdxl_checkpoint_fails_the_dry_run(tmp_path, tiny_folder):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 100)
    assert_usage_error(dry("--model", garbage), "--model garbage.safetensors",
                       "not a valid safetensors file")
    assert_usage_error(dry("--model", "tiny", "--vae", garbage), "--vae garbage.safetensors",
                       "not a valid safetensors file")
    lora = tmp_path / "style.safetensors"
    save_file({"lora_unet_down.lora_down.weight": torch.zeros(2, 2)}, lora)
    assert_usage_error(dry("--model", lora), "not an SDXL checkpoint", "LoRA")
    control = tmp_path / "control.safetensors"  # said "(a UNet alone?)"
    save_file({"controlnet_cond_embedding.conv_in.weight": torch.zeros(2, 2),
               "down_blocks.0.resnets.0.conv1.weight": torch.zeros(2, 2)}, control)
    assert_usage_error(dry("--model", control), "not an SDXL checkpoint (a ControlNet? give it "
                       "with --control-model)")
    unet = tmp_path / "unet.safetensors"
    save_file(load_file(tiny_folder / "unet" / "diffusion_pytorch_model.safetensors"), unet)
    assert_usage_error(dry("--model", unet), "not an SDXL checkpoint", "UNet")
    assert_usage_error(dry("--model", "tiny", "--vae", unet), "not a VAE's weights")
    # The tiny VAE's own weights pass as a VAE (diffusers' key layout).
    vae = tiny_folder / "vae" / "diffusion_pytorch_model.safetensors"
    ok = dry("--model", "tiny", "--vae", vae)
    assert ok.exit_code == 0, ok.stderr


def test_a_pickle_checkpoint_that_is_no_sdxl_model_fails_the_dry_run(tmp_path):
    """A torch.save file of other weights passed every check and failed at the load (exit 1,
    or with the Hub's configs not cached, blaming them). Its tensor names are read without
    running its code (weights_only) when torch.save wrote plain tensors."""
    from hires.model_refs import single_file_refusal

    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"model.weight": torch.zeros(2)}}, other)
    for allow in ([], ["--allow-pickle"]):
        assert_usage_error(dry("--model", other, *allow), "--model other.ckpt",
                           "not an SDXL checkpoint")
    lora = tmp_path / "style.pt"
    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(2)}, lora)
    assert_usage_error(dry("--model", "tiny", "--vae", lora), "not a VAE's weights")
    sdxl = tmp_path / "sdxl.ckpt"  # SD's layout: the weights under "state_dict"
    torch.save({"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1),
                               "conditioner.embedders.0.x": torch.zeros(1)}}, sdxl)
    assert single_file_refusal(sdxl) is None
    nested = tmp_path / "nested.ckpt"  # diffusers unwraps "state_dict" as often as it comes
    torch.save({"state_dict": torch.load(sdxl)}, nested)
    assert single_file_refusal(nested) is None
    cycle: dict = {}
    cycle["state_dict"] = cycle  # it hung: a loop with no end
    looped = tmp_path / "self.ckpt"
    torch.save(cycle, looped)
    assert "not an SDXL checkpoint" in single_file_refusal(looped)
    lightning = tmp_path / "trained.ckpt"  # other objects beside the weights: cannot tell
    torch.save({"state_dict": {"model.weight": torch.zeros(2)}, "callbacks": {Path("x")}},
               lightning)
    assert single_file_refusal(lightning) is None


class _Pipeline:
    """diffusers' pipeline class, as far as load_pipeline uses it for a single file."""

    error: Exception

    @classmethod
    def from_single_file(cls, *args, **kwargs):
        raise cls.error


def test_a_single_file_load_blames_the_cache_only_when_the_config_is_missing(tmp_path,
                                                                            monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    checkpoint = tmp_path / "sdxl.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1),
               "conditioner.embedders.0.x": torch.zeros(1)}, checkpoint)
    monkeypatch.setattr(hires.models, "_sdxl_pipeline_class", lambda: _Pipeline)
    _Pipeline.error = ValueError("size mismatch for conv_in.weight")
    with pytest.raises(ModelError) as caught:
        hires.models.load_pipeline(str(checkpoint), torch.float32)
    assert "size mismatch" in str(caught.value) and "cache" not in str(caught.value)
    try:
        raise LocalEntryNotFoundError("no config")
    except LocalEntryNotFoundError as cause:
        _Pipeline.error = OSError("cannot find the config")
        _Pipeline.error.__cause__ = cause
    with pytest.raises(ModelError, match="not in the local cache"):
        hires.models.load_pipeline(str(checkpoint), torch.float32)


# --- 4, 5: a diffusers folder missing a component, or with pickle weights only -------------------

def test_a_folder_missing_a_component_names_it(copy_of):
    shutil.rmtree(copy_of / "vae")
    assert_usage_error(dry("--model", copy_of), "is missing its vae", "no vae/ folder")
    (copy_of / "scheduler" / "scheduler_config.json").unlink()
    index = json.loads((copy_of / "model_index.json").read_text())
    del index["vae"]  # the first component missing is named
    (copy_of / "model_index.json").write_text(json.dumps(index))
    assert_usage_error(dry("--model", copy_of), "scheduler/scheduler_config.json")
    with pytest.raises(ModelError, match="is missing its scheduler"):
        hires.models.load_pipeline(str(copy_of), torch.float32)


def test_a_folder_with_unreadable_or_missing_weights_fails_the_dry_run(copy_of):
    weights = copy_of / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"\xff" * 32)
    assert_usage_error(dry("--model", copy_of), "unet/diffusion_pytorch_model.safetensors",
                       "not a valid safetensors file")
    weights.unlink()
    assert_usage_error(dry("--model", copy_of), "no weights for its unet")


def test_a_folder_of_pickle_weights_needs_allow_pickle_in_the_dry_run(copy_of):
    weights = copy_of / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), weights.with_name("diffusion_pytorch_model.bin"))
    weights.unlink()
    assert_usage_error(dry("--model", copy_of), "pickle (.bin) weights only", "unet/",
                       "--allow-pickle")
    for args in (("gen", "a fox", *SMALL, "--dry-run", "--allow-pickle"), ("plan", "a fox")):
        result = cli(*args, "--model", copy_of)  # plan loads nothing: pickle is not refused
        assert result.exit_code == 0, result.stderr


# --- 6: the native size of a local model --------------------------------------------------------

def test_a_local_folder_is_planned_at_its_own_native_size(tiny_folder):
    from hires.dry_run import native_size

    assert native_size(str(tiny_folder)) == 256
    assert native_size("tiny") is None and native_size("owner/not-cached") is None

    def plan(model):
        result = cli("plan", "a fox", "--size", "512", "--model", model, "--json")
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)

    folder, builtin = plan(tiny_folder), plan("tiny")
    assert len(folder["stages"]) == len(builtin["stages"]) == 2
    assert folder["peak_bytes"] == builtin["peak_bytes"]


def test_a_big_model_takes_the_native_size_its_configs_say(empty_cache):
    # A cached Hub id of SDXL's shape at another size (configs only: nothing is downloaded).
    cache_repo(empty_cache, "owner/big", {"unet/config.json": json.dumps({"sample_size": 64}),
                                          "vae/config.json": json.dumps(
                                              {"block_out_channels": [128, 256, 512, 512]})})
    from hires.dry_run import native_size

    assert native_size("owner/big") == 512
    result = cli("plan", "a fox", "--size", "1024", "--model", "owner/big", "--json")
    assert result.exit_code == 0, result.stderr
    assert len(json.loads(result.stdout)["stages"]) == 2  # SDXL's 1024: one


# --- 7: fp16 for a single-file VAE ---------------------------------------------------------------

def test_fp16_for_a_single_file_vae_is_the_users_call(tiny_folder, tmp_path):
    """Its fp16 safety cannot be read; asked for, fp16 runs (an overflow stops the run:
    test_not_finite.py)."""
    vae = tiny_folder / "vae" / "diffusion_pytorch_model.safetensors"
    ok = dry("--model", "tiny", "--vae", vae, "--vae-dtype", "fp16")
    assert ok.exit_code == 0, ok.stderr
    assert hires.models.vae_fp16_ok("tiny", str(vae)) is None
    # Its folder, whose config says force_upcast off, may run in fp16.
    ok = dry("--model", "tiny", "--vae", tiny_folder / "vae", "--vae-dtype", "fp16")
    assert ok.exit_code == 0, ok.stderr


# --- 8: the libraries' loading bars in a log -----------------------------------------------------

def test_the_libraries_loading_bars_stay_out_of_a_log(tiny_folder, tmp_path):
    """stderr that is no terminal gets plain lines: diffusers' 'Loading pipeline components'
    bar wrote carriage returns and escapes into it."""
    result = cli("gen", "a fox", *SMALL, "--model", tiny_folder, "-o", tmp_path / "x.png")
    assert result.exit_code == 0, result.stderr
    assert "\r" not in result.stderr and "\x1b" not in result.stderr, result.stderr
    assert "Loading pipeline components" not in result.stderr


def as_fp16_variant(folder: Path) -> Path:
    """`folder` with every weights file renamed as diffusers names the fp16 variant's."""
    for path in list(folder.rglob("*.safetensors")):
        if path.parent.name != "linfusion":  # LinFusion's checkpoint has no variants
            path.rename(path.with_name(path.name.replace(".safetensors", ".fp16.safetensors")))
    return folder


def test_folders_of_the_fp16_variant_alone_load(copy_of, tmp_path, tiny):
    """The Hub's *.fp16.safetensors downloaded alone (half the disk) failed to load: 'no file
    named model.safetensors' after a dry run that passed; a ControlNet's was refused."""
    from helpers_control import tiny_controlnet
    from PIL import Image

    from hires.model_refs import fp16_only

    model = as_fp16_variant(copy_of)
    assert fp16_only(model) and fp16_only(model / "unet") and not fp16_only(model / "linfusion")
    net = tmp_path / "net"
    tiny_controlnet(tiny.unet).save_pretrained(net)
    as_fp16_variant(net)
    Image.new("RGB", (64, 64), "white").save(tmp_path / "edges.png")
    result = cli("gen", "a cat", "--model", model, "--vae", model / "vae", "--size", "64",
                 "--steps", "1", "--control", tmp_path / "edges.png", "--control-model", net,
                 "-o", tmp_path / "a.png")
    assert result.exit_code == 0, result.stderr


def test_sharded_folders_of_the_fp16_variant_alone_load(tmp_path, tiny):
    """diffusers names the fp16 variant's shards NAME.fp16-00001-of-00025.safetensors: a
    --vae folder of them failed to load ('no file named diffusion_pytorch_model.safetensors')
    and a ControlNet's was refused as holding no weights."""
    from helpers_control import tiny_controlnet

    from hires.controlnet import local_problem, weight_files
    from hires.model_refs import fp16_only
    from hires.models import load_vae

    vae, net = tmp_path / "vae", tmp_path / "net"
    tiny.vae.save_pretrained(vae, variant="fp16", max_shard_size="200KB")
    tiny_controlnet(tiny.unet).save_pretrained(net, variant="fp16", max_shard_size="300KB")
    assert any("fp16-00002-of-" in p.name for p in vae.iterdir())
    assert fp16_only(vae) and fp16_only(net)
    loaded = load_vae(str(vae), tiny.vae)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                 tiny.vae.state_dict().values()))
    assert local_problem(str(net)) is None and len(weight_files(net)) > 2


def test_a_vae_or_controlnet_folder_lacking_weights_is_refused_in_one_line(tmp_path, tiny):
    """diffusers leaves weights a folder lacks on the meta device: a --vae or --control-model
    folder without some failed as "NotImplementedError: Cannot copy out of meta tensor" (the
    whole model's folder was refused so already)."""
    from helpers_control import tiny_controlnet

    from hires.controlnet import ControlError, load_controlnet

    vae, net = tmp_path / "vae", tmp_path / "net"
    tiny.vae.save_pretrained(vae)
    tiny_controlnet(tiny.unet).save_pretrained(net)
    for folder, prefix in ((vae, "decoder.conv_out."), (net, "controlnet_cond_embedding.")):
        file = folder / "diffusion_pytorch_model.safetensors"
        save_file({k: v for k, v in load_file(file).items() if not k.startswith(prefix)}, file)
    result = cli("gen", "x", "--model", "tiny", "--vae", vae, "--size", "64", "--steps", "1",
                 "-o", tmp_path / "a.png")
    assert_usage_error(result, f"VAE '{vae}' lacks 2 of the weights its config.json makes",
                       "decoder.conv_out.", "restore it")
    with pytest.raises(ControlError, match=r"ControlNet '.*' lacks \d+ of the weights .*"
                                           r"controlnet_cond_embedding\."):
        load_controlnet(str(net), torch.float32)


def test_a_single_file_sdxl_refiner_is_refused_as_its_folder_is(tmp_path):
    """A refiner's .safetensors has UNet and conditioner weights, so it passed as an SDXL
    checkpoint (its folder was refused), and its load read the refiner's configs."""
    refiner = tmp_path / "refiner.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1),
               "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias":
               torch.zeros(1), "first_stage_model.decoder.conv_in.weight": torch.zeros(1)},
              refiner)
    result = cli("gen", "x", "--model", refiner, "--size", "1024", "--dry-run")
    assert_usage_error(result, "refiner.safetensors is an SDXL refiner", "cannot make one")
    base = tmp_path / "base.safetensors"  # CLIP-L first, OpenCLIP-G second: base's layout
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1),
               "conditioner.embedders.0.transformer.text_model.x": torch.zeros(1),
               "conditioner.embedders.1.model.transformer.x": torch.zeros(1)}, base)
    assert hires.model_refs.single_file_refusal(base) is None


def test_a_dry_run_checks_the_linfusion_a_model_folder_carries(copy_of):
    """--linfusion auto uses FOLDER/linfusion: a broken one passed the dry run, and the run
    failed on it after the model loaded (and with another exit code than when named)."""
    weights = copy_of / "linfusion" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:10])
    for args in ((), ("--linfusion", str(copy_of / "linfusion"))):
        result = cli("gen", "a cat", "--model", copy_of, "--size", "128", "--dry-run", *args)
        assert_usage_error(result, "linfusion", "unreadable")


@pytest.mark.parametrize("flag", ["--model", "--vae"])
def test_a_pickle_file_that_is_no_checkpoint_is_refused_in_the_dry_run(tmp_path, flag):
    """`--allow-pickle --dry-run` with junk at a .ckpt path planned happily; the run failed
    at its load. Only the first bytes are read, never the pickle."""
    junk, empty, made = tmp_path / "junk.ckpt", tmp_path / "empty.pt", tmp_path / "made.ckpt"
    junk.write_bytes(b"<html>404</html>")
    empty.write_bytes(b"")
    torch.save({"w": torch.zeros(1)}, made)
    run = ("gen", "a fox", *SMALL, "--dry-run", "--allow-pickle", "-o", str(tmp_path / "o.png"))
    assert_usage_error(cli(*run, flag, str(junk)), "junk.ckpt is not a PyTorch checkpoint")
    assert_usage_error(cli(*run, flag, str(empty)), "empty.pt is empty")
    result = cli(*run, flag, str(made))  # what torch.save wrote is not refused by its bytes
    assert "not a PyTorch checkpoint" not in result.stderr and "empty" not in result.stderr


def test_junk_at_a_pickle_path_is_said_before_asking_to_allow_pickles(tmp_path):
    """Without --allow-pickle, an empty .ckpt was "a pickle checkpoint ... pass --allow-pickle
    if you trust it": allowing it only led to "is empty"."""
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    assert_usage_error(dry("--model", str(empty)), "empty.ckpt is empty")


def test_a_fifo_at_a_pickle_path_does_not_hang_the_dry_run(tmp_path):
    """Its first bytes were read: the open waited for a writer that never came."""
    import os
    import threading

    fifo = tmp_path / "fifo.ckpt"
    os.mkfifo(fifo)
    done: list = []
    worker = threading.Thread(target=lambda: done.append(dry("--model", str(fifo),
                                                             "--allow-pickle")), daemon=True)
    worker.start()
    worker.join(60)
    if not done:  # free the blocked open, so the thread ends
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert done, "the dry run waited on the FIFO"


@pytest.mark.parametrize("flag", ["--model", "--vae"])
def test_a_pickle_that_is_no_model_fails_in_one_line(tmp_path, flag):
    """torch's "Detected pickle protocol 4 ..." warning and its source line came before the
    error, even with -q."""
    import pickle

    pick = tmp_path / "pick.ckpt"
    pick.write_bytes(pickle.dumps({"x": 1}, protocol=4))
    model = ("--model", "tiny") if flag == "--vae" else ()
    result = cli("gen", "a fox", *SMALL, "--seed", "1", "-q", "--allow-pickle", *model, flag,
                 str(pick), "-o", str(tmp_path / "o.png"))
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("error: could not load pick.ckpt"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# --- a folder of another kind of model (a QA pass) ------------------------------------------------

def test_a_folder_of_another_pipeline_fails_the_dry_run_and_the_load(copy_of):
    """An SD 1.5 folder passed the dry run, then failed with an AttributeError once loaded."""
    index = json.loads((copy_of / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionPipeline"
    del index["text_encoder_2"], index["tokenizer_2"]
    (copy_of / "model_index.json").write_text(json.dumps(index))
    words = ("is a StableDiffusionPipeline without text_encoder_2 and tokenizer_2",
             "not an SDXL model")
    assert_usage_error(dry("--model", copy_of), *words)
    with pytest.raises(ModelError, match=words[0]):
        hires.models.load_pipeline(str(copy_of), torch.float32)


@pytest.mark.parametrize("part, kind", [("unet", "UNet2DConditionModel"),
                                        ("linfusion", "LinFusion")])
def test_a_folder_of_another_part_given_as_the_vae_fails_the_dry_run(part, kind, tiny_folder):
    """A UNet's or LinFusion's folder as --vae passed the dry run, then failed after SDXL."""
    assert_usage_error(dry("--model", tiny_folder, "--vae", tiny_folder / part),
                       f"holds a {kind}, not a VAE: hires takes an AutoencoderKL")


def test_a_vae_of_another_kind_is_called_a_vae(tmp_path, tiny_folder):
    """TAESDXL (AutoencoderTiny) is a VAE: 'not a VAE' was false."""
    folder = Path(shutil.copytree(tiny_folder / "vae", tmp_path / "taesdxl"))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "_class_name": "AutoencoderTiny"}))
    assert_usage_error(dry("--model", "tiny", "--vae", folder),
                       "holds an AutoencoderTiny, a VAE of another kind: hires takes an "
                       "AutoencoderKL")


def test_a_refiner_or_an_index_without_its_class_is_said_so(copy_of):
    index = json.loads((copy_of / "model_index.json").read_text())
    (copy_of / "model_index.json").write_text(json.dumps(
        {**index, "text_encoder": [None, None], "tokenizer": [None, None]}))
    assert_usage_error(dry("--model", copy_of), "is an SDXL refiner", "cannot make one")
    del index["_class_name"]  # diffusers failed with a KeyError
    (copy_of / "model_index.json").write_text(json.dumps(index))
    assert_usage_error(dry("--model", copy_of), "model_index.json without its _class_name")


def test_a_config_that_does_not_fit_its_weights_is_said_in_one_line(copy_of):
    """diffusers' own text, with a blank for the part and advice for training code."""
    config = json.loads((copy_of / "unet" / "config.json").read_text())
    config["block_out_channels"] = [2 * c for c in config["block_out_channels"]]
    (copy_of / "unet" / "config.json").write_text(json.dumps(config))
    result = dry("--model", copy_of)
    assert_usage_error(result, "its weights do not fit unet/config.json (",
                       "where it makes", "restore it from the model's source")
    assert "ignore_mismatched_sizes" not in result.stderr


def test_a_vae_config_that_does_not_fit_its_weights_is_said_in_one_line(tmp_path, tiny_folder,
                                                                        tiny):
    folder = Path(shutil.copytree(tiny_folder / "vae", tmp_path / "vae"))
    config = json.loads((folder / "config.json").read_text())
    config["block_out_channels"] = [2 * c for c in config["block_out_channels"]]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="its weights do not fit its config.json") as caught:
        hires.models.load_vae(str(folder), tiny.pipe.vae)
    assert caught.value.usage and "ignore_mismatched_sizes" not in str(caught.value)


def test_an_unreadable_unet_config_is_not_said_to_lack_a_linfusion(copy_of):
    """--linfusion auto reads unet/config.json to pick: one it cannot read is the loader's to
    say, not 'no LinFusion checkpoint is known'."""
    shutil.rmtree(copy_of / "linfusion")
    (copy_of / "unet" / "config.json").write_text('{"_class_name": "UNet2DConditionModel",')
    assert_usage_error(dry("--model", copy_of), "has a unet/config.json that cannot be read",
                       "restore it")


def test_a_mismatch_in_an_fp16_only_folder_is_not_called_a_missing_file(copy_of, tmp_path):
    """The fp16 variant's fallback to full-precision files hid it: 'no file named
    model.safetensors found'."""
    folder = as_fp16_variant(copy_of)
    config = json.loads((folder / "unet" / "config.json").read_text())
    config["block_out_channels"] = [2 * c for c in config["block_out_channels"]]
    (folder / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="its weights do not fit unet/config.json"):
        hires.models.load_pipeline(str(folder), torch.float16)


def test_a_single_file_vae_of_another_model_is_said_so(tmp_path, tiny):
    """A 16-channel VAE (as Flux's) was 'restore it from the model's source', of a config.json
    it does not have."""
    from diffusers import AutoencoderKL

    other = AutoencoderKL.from_config({**tiny.pipe.vae.config, "latent_channels": 16})
    save_file(other.state_dict(), tmp_path / "other.safetensors")
    with pytest.raises(ModelError, match="it is a VAE of another model .*; give one made for "
                                         "SDXL") as caught:
        hires.models.load_vae(str(tmp_path / "other.safetensors"), tiny.pipe.vae)
    assert caught.value.usage and "config.json" not in str(caught.value)


def test_auto_linfusion_on_a_folder_without_one_known_fails_the_dry_run(copy_of):
    """A folder without linfusion/ whose UNet no checkpoint is known for passed the dry run,
    and the run said so once the model had loaded."""
    shutil.rmtree(copy_of / "linfusion")
    assert_usage_error(dry("--model", copy_of), f"no LinFusion checkpoint is known for "
                                                f"'{copy_of}'", "--linfusion none")
    assert dry("--model", copy_of, "--linfusion", "none").exit_code == 0


def test_auto_linfusions_pick_is_read_from_the_unet_config(tiny):
    """The count of attn1 modules from a config (what picks a checkpoint before loading) is
    the count of the UNet diffusers builds from it: tiny, SD 1.5's and SDXL's."""
    from diffusers import UNet2DConditionModel

    from hires.linfusion import attn1_count, checkpoint_for, checkpoint_for_config
    from hires.sdxl import SDXL_UNET_CONFIG

    with torch.device("meta"):
        unets = [tiny.unet.__class__.from_config(tiny.unet.config),
                 UNet2DConditionModel(cross_attention_dim=768),
                 UNet2DConditionModel.from_config(SDXL_UNET_CONFIG)]
    for unet in unets:
        attn1 = sum(1 for name, _ in unet.named_modules() if name.endswith("attn1"))
        assert attn1_count(dict(unet.config)) == attn1
        assert checkpoint_for_config(dict(unet.config)) == checkpoint_for(None, unet)
    assert checkpoint_for_config(dict(SDXL_UNET_CONFIG)) == "Yuanshi/LinFusion-XL"
    assert attn1_count({"down_block_types": "x"}) is None


def test_a_single_file_offline_without_sdxls_configs_fails_before_it_loads(tmp_path,
                                                                          empty_cache,
                                                                          monkeypatch):
    """It failed only once diffusers read the file (7 GB)."""
    checkpoint = tmp_path / "sdxl.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1),
               "conditioner.embedders.0.x": torch.zeros(1)}, checkpoint)
    _Pipeline.error = AssertionError("read the file")
    monkeypatch.setattr(hires.models, "_sdxl_pipeline_class", lambda: _Pipeline)
    with pytest.raises(ModelError, match="single files are read with SDXL base's configs"):
        hires.models.load(str(checkpoint), device="cpu")


def test_a_vae_mismatch_in_a_model_folder_names_vae_config(copy_of):
    """diffusers leaves the part's name blank: the weight's name says it is the VAE's."""
    config = json.loads((copy_of / "vae" / "config.json").read_text())
    config["block_out_channels"] = [2 * c for c in config["block_out_channels"]]
    (copy_of / "vae" / "config.json").write_text(json.dumps(config))
    assert_usage_error(dry("--model", copy_of), "its weights do not fit vae/config.json (decoder.")


@pytest.mark.parametrize(("part", "dropped"), [("text_encoder_2", "text_projection."),
                                               ("unet", "down_blocks.1.")])
def test_a_part_saved_without_some_weights_is_refused_not_run_at_random(part, dropped, copy_of,
                                                                          tmp_path):
    """diffusers and transformers start missing weights at random, and say so in a log hires
    keeps off: a text encoder without its projection made an image (wrong, without a word),
    and a UNet without a block failed in torch's words ('Cannot copy out of meta tensor')."""

    weights = next((copy_of / part).glob("*.safetensors"))
    whole = load_file(weights)
    first = min(k for k in whole if k.startswith(dropped))  # the same on every run
    save_file({k: v for k, v in whole.items() if not k.startswith(dropped)}, weights)
    out = tmp_path / "out.png"
    result = cli("gen", "a fox", *SMALL, "--model", copy_of, "-o", out)
    assert_usage_error(result, f"model '{copy_of}': its {part}/ lacks ",
                       f"the weights its config.json makes (such as {first}),",
                       "restore it from the model's source")
    assert not out.exists()


def test_a_pickle_cut_short_is_refused_in_the_dry_run(tiny, tmp_path):
    """torch.save's zip cut short passed the dry run with --allow-pickle, and the run failed as
    it loaded (exit 1)."""
    folder = tmp_path / "bin"
    tiny.pipe.save_pretrained(folder, safe_serialization=False)
    weights = folder / "unet" / "diffusion_pytorch_model.bin"
    assert weights.read_bytes()[:2] == b"PK"
    weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
    assert_usage_error(dry("--model", folder, "--allow-pickle"),
                       "unet/diffusion_pytorch_model.bin is cut short")


def test_a_pickle_model_loads_without_an_error_line(tiny, tmp_path):
    """A folder of .bin weights under --allow-pickle made its image, but diffusers logged
    "An error occurred while trying to fetch .../unet: ..." on the way: an error that was
    none (QA 210)."""
    folder = tmp_path / "bin"
    tiny.pipe.save_pretrained(folder, safe_serialization=False)
    out = tmp_path / "out.png"  # a process: diffusers' log goes to the real stderr
    result = run_hires("gen", "a fox", *SMALL, "--model", folder, "--allow-pickle",
                       "--linfusion", "none", "-q", "-o", out)
    assert result.returncode == 0, result.stderr
    assert out.is_file() and "error" not in result.stderr.lower(), result.stderr
