"""A `--model` or `--vae` that cannot name anything is a usage error before any loading: a
malformed Hub id, a bare name that is no local path, or a folder that holds no diffusers model."""

import json
import os

import pytest
from helpers_cli import assert_usage_error, cli


@pytest.mark.parametrize("args, words", [
    (("--model", "nope/"), ("--model nope/", "Hub id", "spelling")),
    (("--model", "tiny", "--vae", "nope/"), ("--vae nope/", "Hub id")),
    (("--model", "a model"), ("--model a model", "Hub id")),
])
def test_a_malformed_hub_id_is_a_usage_error(tmp_path, args, words):
    out = tmp_path / "x.png"
    assert_usage_error(cli("gen", "a fox", "--size", "64", *args, "-o", out), *words)
    assert not out.exists()


@pytest.mark.parametrize("args, words", [
    (("--model", "mymodel"), ("--model mymodel", "no such file or folder", "owner/name")),
    (("--model", "tiny", "--vae", "myvae"), ("--vae myvae", "owner/name")),
    (("--model", "tiny", "--control", "{img}", "--control-model", "mycn"),
     ("--control-model mycn", "owner/name")),
    (("--model", "tiny", "--ip-image", "{img}", "--ip-adapter", "myip"),
     ("--ip-adapter myip", "owner/name")),
    (("--model", "tiny", "--lora", "mylora:0.5"), ("--lora mylora", "no such file or folder")),
])
def test_a_bare_name_that_is_no_local_path_is_a_usage_error(tmp_path, args, words):
    """A mistyped local folder without a slash went to the Hub as a repository name (and the
    dry run planned it); Hub ids have an owner."""
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "in.png")
    args = [str(tmp_path / "in.png") if a == "{img}" else a for a in args]
    assert_usage_error(cli("gen", "a fox", "--size", "64", *args, "--dry-run"), *words)


def test_a_folder_without_a_model_says_what_to_give(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_usage_error(cli("gen", "a fox", "--size", "64", "--model", empty, "--dry-run"),
                       "model_index.json", "give the folder")
    assert_usage_error(cli("gen", "a fox", "--size", "64", "--model", "tiny", "--vae", empty,
                           "--dry-run"), "config.json", "VAE")
    # a VAE folder is judged by its config only here: {} is AutoencoderKL's defaults, one level
    (empty / "config.json").write_text("{}")
    assert_usage_error(cli("gen", "a fox", "--size", "64", "--model", "tiny", "--vae", empty,
                           "--dry-run"), "latents at 1/1 scale and this model's VAE 4 at 1/8")
    from hires.tiny import tiny_vae

    (empty / "config.json").write_text(json.dumps(dict(tiny_vae().config)))
    ok = cli("gen", "a fox", "--size", "64", "--model", "tiny", "--vae", empty, "--dry-run")
    assert ok.exit_code == 0, ok.stderr


def test_an_image_given_as_weights_is_not_called_a_pickle(tmp_path):
    """A PNG as --model, --vae, --control-model or --ip-adapter was 'a pickle checkpoint ...
    pass --allow-pickle', advice that then failed too."""
    from PIL import Image

    image = tmp_path / "photo.png"
    Image.new("RGB", (64, 64)).save(image)
    out = tmp_path / "x.png"
    for args, what in [(("--model", image), "an SDXL model"),
                       (("--model", "tiny", "--vae", image), "a VAE"),
                       (("--model", "tiny", "--control", image, "--control-model", image),
                        "a ControlNet"),
                       (("--model", "tiny", "--ip-image", image, "--ip-adapter", image),
                        "an IP-Adapter")]:
        result = cli("gen", "a fox", "--size", "256", "--steps", "1", *args, "-o", out)
        assert_usage_error(result, f"photo.png is not {what}'s weights: give a .safetensors")
        assert "stage 0" not in result.stderr  # before any planning or loading
        assert "pickle" not in result.stderr and not out.exists()


def _missing_while_unreachable(*args, **kwargs):
    """What diffusers raises for a Hub file when there is no network: a vague OSError, its
    cause the Hub's 'not in the cache' error."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        raise LocalEntryNotFoundError("cannot find the requested files")
    except LocalEntryNotFoundError as e:
        raise OSError("owner/x does not appear to have a file named config.json.") from e


def test_a_hub_vae_or_controlnet_with_no_network_says_so(monkeypatch):
    """Both said 'does not appear to have a file named config.json', as if the repo were
    broken."""
    import diffusers
    from huggingface_hub import constants

    from hires import model_refs, models
    from hires.controlnet import _load

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(models, "_vae_from_pretrained", _missing_while_unreachable)
    with pytest.raises(model_refs.ModelError, match="not in the local cache and the Hugging Face "
                                                    "Hub cannot be reached"):
        models.load_vae("owner/vae", like=None)
    monkeypatch.setattr(diffusers.ControlNetModel, "from_pretrained", _missing_while_unreachable)
    with pytest.raises(model_refs.ModelError, match="not in the local cache and the Hugging Face "
                                                    "Hub cannot be reached"):
        _load("owner/cn", dtype=None, allow_pickle=False)


def test_an_unreachable_hub_switches_to_the_cache_once_and_only_for_hub_ids(monkeypatch):
    """huggingface_hub retried each file for about 25 s before falling back to the cache (a
    Hub VAE offline took a minute to fail); one probe now decides, for the whole process."""
    from huggingface_hub import constants, utils

    from hires import model_refs, models
    from hires.job import Job

    probes = []

    class Unreachable:
        def head(self, url, **kwargs):
            probes.append(url)
            raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(utils, "get_session", Unreachable)
    monkeypatch.setattr(model_refs, "_hub_state", {})
    assert not model_refs.uses_hub(Job(model="tiny", lora=["./local.safetensors"]))
    assert not model_refs.go_offline_if_unreachable(Job(model="tiny")) and probes == []
    job = Job(model="tiny", vae="owner/vae", lora=["owner/lora:0.5", "./local.safetensors"])
    assert model_refs.uses_hub(job)
    assert model_refs.uses_hub(Job(model="tiny", lora=["owner/lora"]))
    assert model_refs.uses_hub(Job(model="./sdxl.safetensors"))  # LinFusion auto: from the Hub
    assert model_refs.go_offline_if_unreachable(job)
    assert constants.HF_HUB_OFFLINE and os.environ["HF_HUB_OFFLINE"] == "1"
    assert not model_refs.go_offline_if_unreachable(Job(model="owner/other"))
    assert len(probes) == 1
    with pytest.raises(model_refs.ModelError, match="not in the local cache"):
        models.load_vae("owner/vae", like=None)


def test_a_hub_that_answers_stays_online(monkeypatch):
    from huggingface_hub import constants, utils

    from hires import model_refs
    from hires.job import Job

    class Answers:
        def head(self, url, **kwargs):
            return object()  # any answer: a 4xx or 5xx status too

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(utils, "get_session", Answers)
    monkeypatch.setattr(model_refs, "_hub_state", {})
    assert not model_refs.go_offline_if_unreachable(Job(model="owner/model"))
    assert not constants.HF_HUB_OFFLINE


def test_a_dry_run_asks_the_hub_once_as_the_run_does(monkeypatch, tmp_path):
    """With no network and HF_HUB_OFFLINE unset, a dry run planned a Hub model that is not
    cached; the run, which asks the Hub first, then refused it."""
    from helpers_cli import cli, error_lines
    from huggingface_hub import constants, utils

    from hires import model_refs

    class Unreachable:
        def head(self, url, **kwargs):
            raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(utils, "get_session", Unreachable)
    monkeypatch.setattr(model_refs, "_hub_state", {})
    result = cli("gen", "x", "--model", "owner/not-cached", "--size", "256", "--dry-run",
                 "-o", tmp_path / "o.png", env={"HF_HUB_OFFLINE": "0"})
    assert result.exit_code == 1, (result.stdout, result.stderr)
    (line,) = error_lines(result.stderr)
    assert "model 'owner/not-cached' is not in the local cache and the Hugging Face Hub " \
           "cannot be reached" in line
