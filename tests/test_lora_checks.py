"""A LoRA the run would refuse is refused before any work, in a dry run too."""

from __future__ import annotations

import pytest
import torch
from helpers_cli import cli
from helpers_lora import write_tiny_lora
from safetensors.torch import save_file


@pytest.fixture(scope="module")
def lora(tiny, tmp_path_factory):
    return write_tiny_lora(tmp_path_factory.mktemp("l") / "style.safetensors", tiny.pipe)


def dry(*loras: str):
    args = [a for spec in loras for a in ("--lora", spec)]
    return cli("gen", "a cat", "--model", "tiny", "--size", "64", "--dry-run", *args)


def test_a_lora_scale_past_ten_is_refused(lora):
    """`:1e9` passed and made an all-black image, exit 0."""
    refused = dry(f"{lora}:1e9")
    assert refused.exit_code == 2 and "the scale must be from -10 to 10" in refused.stderr
    assert dry(f"{lora}:-1.5").exit_code == 0  # a negative scale is a LoRA's use too


def test_a_lora_given_twice_is_refused(lora):
    refused = dry(f"{lora}:0.8", f"{lora}:0.3")
    assert refused.exit_code == 2
    assert f"--lora {lora} is given twice (scales 0.8 and 0.3" in refused.stderr


@pytest.mark.parametrize("kind", ["empty folder", "garbage", "not a lora", "control-lora"])
def test_a_local_file_that_is_no_lora_is_refused_by_a_dry_run(tmp_path, kind):
    """The dry run passed these; the run then exited 1 or 2 after loading the model."""
    if kind == "empty folder":
        ref = tmp_path / "empty"
        ref.mkdir()
        said = "holds no .safetensors file"
    elif kind == "garbage":
        ref = tmp_path / "garbage.safetensors"
        ref.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
        said = "is not a readable safetensors file"
    elif kind == "not a lora":
        ref = tmp_path / "vae.safetensors"
        save_file({"decoder.conv_in.weight": torch.zeros(2, 2)}, ref)
        said = "holds no LoRA weights"
    else:  # its tensors say lora, so it passed, and diffusers' loader then failed on it
        ref = tmp_path / "control-lora-canny.safetensors"
        save_file({"lora_controlnet": torch.zeros(1),
                   "input_blocks.1.0.in_layers.2.up": torch.zeros(8, 4)}, ref)
        said = "is a Control-LoRA"
    refused = dry(str(ref))
    assert refused.exit_code == 2 and said in refused.stderr, refused.stderr


def test_a_real_lora_passes(lora):
    assert dry(f"{lora}:0.7").exit_code == 0


@pytest.mark.parametrize("ref", ["owner/ink-lora:0.5", "owner/ink-lora/ink.safetensors"])
def test_a_hub_lora_not_cached_while_offline_is_refused_by_a_dry_run(tmp_path, monkeypatch,
                                                                      ref):
    """It passed the dry run; the run failed after the model had loaded (minutes with SDXL)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    result = dry(ref)
    assert result.exit_code == 1
    assert f"LoRA {ref.removesuffix(':0.5')}: no such local file or folder, and not in the " \
        "local Hugging Face cache" in result.stderr
    planned = cli("plan", "a cat", "--model", "tiny", "--size", "64", "--lora", ref)
    assert planned.exit_code == 0, planned.stderr  # a plan may be for another machine


def test_one_lora_spelled_two_ways_is_refused(lora, monkeypatch):
    """`--lora lora.safetensors --lora ./lora.safetensors:0.5` applied it twice (1.5 in all):
    the check compared the words."""
    monkeypatch.chdir(lora.parent)
    for other in (f"./{lora.name}:0.5", f"{lora}:0.5", f"{lora.parent}:0.5",
                  f"../{lora.parent.name}/{lora.name}:0.5"):
        refused = dry(lora.name, other)
        assert refused.exit_code == 2, (other, refused.stderr)
        assert f"--lora {lora.name} is given twice, also as {other.removesuffix(':0.5')} " \
            "(scales 1 and 0.5, which would add up)" in refused.stderr
    assert "given twice" not in dry(lora.name, "owner/style-lora").stderr  # another LoRA


def test_a_lora_file_of_another_name_is_checked_as_the_run_reads_it(tmp_path):
    """Only a .safetensors name was checked: junk.lora passed the dry run, and the run (which
    reads any name but a pickle's as safetensors) refused it."""
    junk = tmp_path / "junk.lora"
    junk.write_bytes(b"hello\n")
    refused = dry(str(junk))
    assert refused.exit_code == 2
    assert f"LoRA {junk}: junk.lora is not a readable safetensors file" in refused.stderr


def test_a_lycoris_loha_or_lokr_is_refused_in_words_by_a_dry_run_and_a_run(tmp_path, tiny):
    """They passed the dry run; the run quoted diffusers' 'keys have not been correctly
    renamed:' and nothing after it."""
    from hires.lora import LoraError, load_loras

    for kind, mark in (("LoHa", "hada_w1_a"), ("LoKr", "lokr_w1")):
        ref = tmp_path / f"{kind}.safetensors"
        save_file({f"lora_unet_down_blocks_1_attentions_0_proj_in.{mark}": torch.zeros(4, 4),
                   "lora_unet_down_blocks_1_attentions_0_proj_in.alpha": torch.tensor(4.0)}, ref)
        said = f"LoRA {ref}: a LyCORIS {kind} file, which diffusers cannot load"
        refused = dry(str(ref))
        assert refused.exit_code == 2 and said in refused.stderr, refused.stderr
        with pytest.raises(LoraError, match=said.replace(str(ref), ".*")):
            load_loras(tiny.pipe, [str(ref)])


@pytest.mark.parametrize("alpha, said", [
    (torch.tensor(float("nan")), "is nan, not a finite number"),
    (torch.tensor([float("nan"), 1.0]), "holds 2 numbers, not one")])
def test_a_lora_with_an_alpha_not_one_number_is_refused_by_a_dry_run(lora, tmp_path, alpha,
                                                                     said):
    """They passed; the run refused the NaN, and diffusers the pair in its words ("a Tensor
    with 2 elements cannot be converted to Scalar")."""
    from safetensors.torch import load_file

    state = load_file(lora)
    layer = next(k for k in state if k.endswith(".alpha"))
    save_file({**state, layer: alpha}, tmp_path / "bad.safetensors")
    refused = dry(str(tmp_path / "bad.safetensors"))
    assert refused.exit_code == 2
    assert f"the alpha of {layer.removesuffix('.alpha')} {said}" in refused.stderr


def test_a_cached_hub_lora_is_checked_by_a_dry_run_as_a_local_one(tmp_path, monkeypatch):
    """A LoHa in the cache passed the dry run; the run refused it once the model had loaded."""
    from huggingface_hub import constants

    snapshot = tmp_path / "hub" / "models--qa--loha" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    save_file({"lora_unet_down_blocks_1_attentions_0_proj_in.hada_w1_a": torch.zeros(4, 4)},
              snapshot / "loha.safetensors")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    for ref in ("qa/loha", "qa/loha/loha.safetensors"):
        refused = dry(ref)
        assert refused.exit_code == 2, refused.stderr
        assert f"LoRA {ref}: a LyCORIS LoHa file" in refused.stderr
