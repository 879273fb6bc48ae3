"""The model resolver: the tiny model saved as a folder loads like a real one; clear errors."""

import numpy as np
import pytest

from hires.model_refs import ModelError, model_kind
from hires.models import load
from hires.pipeline import generate


def test_components_loaded_by_relative_paths_name_them_after_a_chdir(tiny_folder, tmp_path,
                                                                      monkeypatch):
    monkeypatch.chdir(tiny_folder.parent)
    loaded = load(tiny_folder.name, linfusion=f"{tiny_folder.name}/linfusion", device="cpu")
    assert (loaded.model, loaded.linfusion) == (str(tiny_folder), str(tiny_folder / "linfusion"))
    monkeypatch.chdir(tmp_path)  # where neither relative path is anything
    result = generate("a fox", components=loaded, width=256, height=256, steps=1, seed=5)
    assert (result.job.model, result.linfusion) == (str(tiny_folder),
                                                    str(tiny_folder / "linfusion"))


def test_reference_kinds(tmp_path):
    assert model_kind("tiny") == "tiny"
    assert model_kind("stabilityai/stable-diffusion-xl-base-1.0") == "hub"
    assert model_kind(str(tmp_path)) == "folder"
    assert model_kind("model.safetensors") == "file"
    assert model_kind("./models/x") == "file"


def test_saved_tiny_folder_loads_through_the_resolver(tiny, tiny_folder):
    loaded = load(str(tiny_folder))
    assert loaded.linfusion == str(tiny_folder / "linfusion")  # the folder's own LinFusion
    from hires.linfusion import LinearAttention

    attn1 = [m for n, m in loaded.unet.named_modules() if n.endswith("attn1")]
    assert len(attn1) == 11 and all(isinstance(m, LinearAttention) for m in attn1)
    kwargs = dict(prompt="a fox", width=256, height=256, steps=3, seed=5)
    a = generate(components=loaded, **kwargs)
    b = generate(components=tiny, **kwargs)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))


def test_linfusion_none_keeps_the_original_attention(tiny_folder):
    loaded = load(str(tiny_folder), linfusion="none")
    assert loaded.linfusion is None
    names = {type(m).__name__ for n, m in loaded.unet.named_modules() if n.endswith("attn1")}
    assert names == {"Attention"}


def test_pickle_weights_need_explicit_permission(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"\x80\x04N.")  # a pickle by its bytes (None), never read
    with pytest.raises(ModelError, match="--allow-pickle"):
        load(str(ckpt))


def test_missing_file_and_non_model_folder(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load(str(tmp_path / "nope.safetensors"))
    with pytest.raises(ModelError, match="model_index.json"):
        load(str(tmp_path))


def test_uncached_hub_model_offline_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelError) as info:
        load("someone/not-a-cached-model")
    message = str(info.value)
    assert "\n" not in message and "cache" in message and "--model" in message


def test_loading_from_python_prints_nothing_on_stderr():
    """hires.load('tiny') printed diffusers' "There are modules in AutoencoderKL that should be
    kept in float32: []" when it cast the VAE (the CLI's logging kept it quiet)."""
    import subprocess
    import sys

    from helpers_cli import subprocess_env

    # without the verbosity hires.cli sets for itself (and this process's children)
    env = {k: v for k, v in subprocess_env().items()
           if k not in ("DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY")}
    # bf16: the fp32 VAE is cast, on any CPU
    done = subprocess.run([sys.executable, "-c", "import hires; hires.load('tiny', "
                           "vae_dtype='bf16')"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
