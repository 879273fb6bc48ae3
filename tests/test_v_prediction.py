"""A v-prediction model is refused in one line before any work: the sampler reads the UNet's
output as noise, so its images would come out wrong without a word."""

import json
import shutil

import pytest
from helpers_cli import assert_usage_error, cli

from hires.model_refs import ModelError, _keys_refusal, prediction_refusal
from hires.models import load


@pytest.fixture
def v_folder(tiny_folder, tmp_path):
    folder = tmp_path / "v-model"
    shutil.copytree(tiny_folder, folder)
    config = folder / "scheduler" / "scheduler_config.json"
    values = json.loads(config.read_text())
    config.write_text(json.dumps({**values, "prediction_type": "v_prediction"}))
    return folder


def test_a_v_prediction_folder_is_refused_in_the_dry_run_and_the_load(v_folder):
    result = cli("gen", "a fox", "--model", v_folder, "--size", "256", "--dry-run")
    assert_usage_error(result, "is a v-prediction model, which hires does not run")
    with pytest.raises(ModelError, match="is a v-prediction model"):
        load(str(v_folder), "none", "fp32", "cpu")


def test_what_a_scheduler_config_or_a_file_says():
    assert prediction_refusal({"prediction_type": "epsilon"}) is None
    assert prediction_refusal({}) is None and prediction_refusal(None) is None
    assert "v-prediction" in prediction_refusal({"prediction_type": "v_prediction"})
    keys = ["model.diffusion_model.input_blocks.0.0.weight",
            "conditioner.embedders.0.transformer.text_model.embeddings.position_ids",
            "conditioner.embedders.1.model.ln_final.weight"]
    assert _keys_refusal("x.safetensors", keys, vae=False) is None
    said = _keys_refusal("x.safetensors", [*keys, "v_pred"], vae=False)
    assert said.startswith("x.safetensors is a v-prediction model")
