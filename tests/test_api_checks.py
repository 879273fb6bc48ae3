"""The library API's checks found in a QA pass: each refuses, names or saves what README says,
in the library's keywords."""

import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import hires
from hires.job import JobError
from hires.model_refs import ModelError
from hires.output import OutputUsage

ONE = {"steps": 1, "seed": 5}



@pytest.fixture
def made(tiny):
    return hires.generate("x", components=tiny, size=128, **ONE)


def other_vae_dtype(tiny) -> str:
    return "fp32" if str(tiny.vae_dtype) == "torch.bfloat16" else "bf16"


@pytest.mark.parametrize("setting,words", [
    ({"linfusion": "none"}, "linfusion='none', but the components were loaded with linfusion "
                            "'tiny': drop linfusion=, or load them with it"),
    ({"vae": "tiny"}, "vae='tiny', but the components were loaded with vae None: drop vae="),
    ({"vae_dtype": "other"}, "vae_dtype='.*', but the components were loaded with vae_dtype"),
    ({"offload": "none"}, "offload='none', but the components were loaded with offload "
                          "'model'"),
])
def test_a_setting_that_disagrees_with_the_components_is_refused(tiny, setting, words):
    from dataclasses import replace

    if setting.get("vae_dtype") == "other":
        setting = {"vae_dtype": other_vae_dtype(tiny)}
    if "offload" in setting:  # as a GPU's loaded with offload="model" would be
        tiny = replace(tiny, offload="model")
    with pytest.raises(JobError, match=words):
        hires.generate("x", components=tiny, size=128, **setting, **ONE)


def test_settings_that_agree_with_the_components_run_and_are_recorded(tiny):
    result = hires.generate("x", components=tiny, size=128, linfusion="tiny", offload="none",
                            vae_dtype=str(tiny.vae_dtype).removeprefix("torch.")
                            .replace("bfloat16", "bf16").replace("float32", "fp32"), **ONE)
    assert result.job.linfusion == "tiny" and result.linfusion == "tiny"


@pytest.mark.parametrize("value", ["no", 1, None])
def test_load_takes_allow_pickle_only_as_a_bool(value):
    with pytest.raises(JobError, match="allow_pickle must be True or False"):
        hires.load("m.ckpt", allow_pickle=value)
    # generate's None is a keyword not given (README): the default, False, passes
    refused = (JobError, "allow_pickle must be True or False") if value is not None else (
        ModelError, "model file not found: m.ckpt")
    with pytest.raises(refused[0], match=refused[1]):
        hires.generate("x", model="m.ckpt", allow_pickle=value, size=128, **ONE)


@pytest.fixture
def transparent(tmp_path):
    path = tmp_path / "rgba.png"
    Image.new("RGBA", (96, 64), (200, 50, 50, 128)).save(path)
    return path


def test_a_transparent_result_saved_as_jpeg_says_it_is_flattened(tiny, transparent, tmp_path):
    result = hires.upscale(transparent, components=tiny, scale=2, steps=1, seed=5)
    assert result.image.mode == "RGBA"
    with pytest.warns(UserWarning, match="JPEG holds no transparency: x.jpg is flattened"):
        record = result.save(tmp_path / "x.jpg")
    assert [w for w in record["warnings"] if "flattened on white" in w] == [
        "JPEG holds no transparency: x.jpg is flattened on white; use png, webp or tiff to "
        "keep it"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = result.save(tmp_path / "y.jpg")
        kept = result.save(tmp_path / "z.png")
    # Each file's record says what its own save lost: y.jpg's not x.jpg's, the PNG nothing
    # (they carried every earlier save's, through the result's own list)
    assert [w for w in again["warnings"] if "flattened" in w] == [
        w.replace("x.jpg", "y.jpg") for w in record["warnings"] if "flattened" in w]
    assert not [w for w in kept["warnings"] + result.warnings if "flattened" in w]
    from hires.output import read_metadata

    assert read_metadata(tmp_path / "z.png")["hires"]["result"]["warnings"] == kept["warnings"]
    assert read_metadata(tmp_path / "y.jpg")["hires"]["result"]["warnings"] == again["warnings"]


def test_save_into_a_folder_takes_the_default_name(made, tmp_path):
    record = made.save(f"{tmp_path}/new/")
    assert record["path"] == str(tmp_path / "new" / "hires_128x128_s5.png")
    (tmp_path / "there").mkdir()
    record = made.save(tmp_path / "there")
    assert record["path"] == str(tmp_path / "there" / "hires_128x128_s5.png")
    assert (tmp_path / "there" / "hires_128x128_s5.png").is_file()


def test_an_upscale_saved_into_a_folder_ends_in_its_input_name(tiny, small, tmp_path):
    result = hires.upscale(small, components=tiny, scale=2, **ONE)
    record = result.save(f"{tmp_path}/out/")
    assert record["path"] == str(tmp_path / "out" / "hires_192x128_s5_in.png")


def test_a_name_without_a_suffix_gets_the_jobs_format(tiny, tmp_path):
    result = hires.generate("x", components=tiny, size=128, format="jpg", **ONE)
    record = result.save(tmp_path / "fmtjpg")
    assert record["path"] == str(tmp_path / "fmtjpg.jpg")
    with Image.open(tmp_path / "fmtjpg.jpg") as im:
        assert im.format == "JPEG"


def test_a_16_bit_jpeg_is_refused_before_any_work(tiny):
    def progress(event):
        raise AssertionError("work started")

    with pytest.raises(JobError, match="JPEG holds 8 bits a channel"):
        hires.generate("x", components=tiny, size=128, depth=16, format="jpg",
                       progress=progress, **ONE)


def test_generate_from_an_image_keywords_is_sized_as_upscale(tiny, small):
    with pytest.raises(JobError, match="^give one of size, scale, width/height or print_size"):
        hires.generate(components=tiny, image=str(small), steps=2)
    result = hires.generate("x", components=tiny, image=str(small), size=192, **ONE)
    assert result.image.size == (192, 128)  # the input's 3:2, as hires up --size keeps it


@pytest.mark.parametrize("setting", [
    {"width": "256", "height": 256}, {"width": 256.0, "height": 256}, {"steps": "1"},
    {"steps": 1.0}, {"seed": "5"}, {"guidance": "7"}, {"depth": "16"}, {"steps": True},
    {"guidance": True}, {"size": "256"}, {"size": 256.0}, {"dpi": "300", "size": 128},
])
def test_generate_takes_numbers_only_as_numbers(tiny, setting):
    with pytest.raises(JobError, match="must be a (whole )?number"):
        hires.generate("x", components=tiny, **{"size": 128, **ONE, **setting}
                       if "width" not in setting else {**ONE, **setting})


def test_a_float_setting_takes_an_int(tiny):
    result = hires.generate("x", components=tiny, size=128, guidance=7, **ONE)
    assert result.job.guidance == 7.0


@pytest.mark.parametrize("sizes", [{"width": "256", "height": 256}, {"size": 256.0}])
def test_upscale_takes_sizes_only_as_whole_numbers(tiny, small, sizes):
    with pytest.raises(JobError, match="must be a whole number"):
        hires.upscale(small, components=tiny, **sizes)


def test_aspect_may_be_a_number(tiny):
    result = hires.generate("x", components=tiny, size=192, aspect=1.5, **ONE)
    assert result.image.size == (192, 128)


@pytest.mark.parametrize("aspect", [(16, 9), True, [16, 9]])
def test_aspect_of_another_kind_is_refused(tiny, aspect):
    with pytest.raises(JobError, match="aspect must be text like '16:9' or a number like 1.5"):
        hires.generate("x", components=tiny, size=128, aspect=aspect, **ONE)


def test_upscale_says_what_to_drop(tiny, small):
    with pytest.raises(JobError, match="^an upscale keeps the input's aspect; drop aspect"):
        hires.upscale(small, components=tiny, size=512, aspect="16:9")
    with pytest.raises(JobError, match="^give only one of size, scale, width/height or "
                                       "print_size"):
        hires.upscale(small, components=tiny, size=256, scale=2)


def test_a_side_far_out_of_range_says_the_range(tiny):
    with pytest.raises(JobError, match="^size must be at most 32768, got 99999$"):
        hires.generate("x", components=tiny, size=99999)


def test_model_errors_name_the_keywords(tmp_path):
    from hires.models import ModelError

    ckpt = tmp_path / "m.ckpt"
    ckpt.write_bytes(b"\x80\x04N.")  # a pickle by its bytes (None), never read
    with pytest.raises(ModelError) as caught:
        hires.load(str(ckpt))
    message = str(caught.value)
    assert "allow_pickle=True" in message and "--" not in message, message
    with pytest.raises(ModelError) as caught:
        hires.generate("x", model=str(ckpt), size=128, **ONE)
    assert "allow_pickle=True" in str(caught.value) and "--" not in str(caught.value)
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="use device=cpu"):
            hires.load("tiny", device="cuda")


def test_the_cli_keeps_its_flags_in_model_errors(tmp_path):
    from typer.testing import CliRunner

    from hires.cli import app

    ckpt = tmp_path / "m.ckpt"
    ckpt.write_bytes(b"\x80\x04N.")  # a pickle by its bytes (None), never read
    done = CliRunner().invoke(app, ["gen", "x", "--model", str(ckpt), "--size", "128",
                                    "-o", str(tmp_path / "o.png")])
    assert done.exit_code == 2 and "--allow-pickle" in done.output, done.output


@pytest.mark.parametrize("call,words", [
    (lambda c, p: hires.generate("x", components=c, plan="fast"), "plan must be a hires.plan"),
    (lambda c, p: hires.generate("x", components=c, checkpoint=5), "checkpoint must be a file"),
    (lambda c, p: hires.upscale(p, components=c, scale=2, plan="fast"), "plan must be"),
])
def test_arguments_of_the_wrong_kind_are_type_errors(tiny, small, call, words):
    with pytest.raises(TypeError, match=words):
        call(tiny, small)


def test_save_refuses_a_path_of_the_wrong_kind_and_stdout(made):
    with pytest.raises(TypeError, match="save takes a file's path"):
        made.save(None)
    with pytest.raises(OutputUsage, match="save writes a file, not stdout"):
        made.save("-")


def test_save_takes_numpys_whole_number_for_a_quality(made, tmp_path):
    """quality=np.int64(50) was refused ("must be a whole number"), where generate takes
    numpy's numbers for its settings."""
    record = made.save(tmp_path / "m.jpg", quality=np.int64(50))
    with Image.open(record["path"]) as im:
        assert im.format == "JPEG"
    with pytest.raises(Exception, match="quality must be a whole number"):
        made.save(tmp_path / "n.jpg", quality=np.float64(50.5))


def test_save_expands_the_home_folder(made, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    record = made.save("~/home.png")
    assert record["path"] == str(tmp_path / "home.png") and (tmp_path / "home.png").is_file()


def test_the_package_lists_and_exports_its_names():
    names = dir(hires)
    assert {"generate", "upscale", "load", "Job", "Result", "JobError"} <= set(names)
    from hires.job import JobError as job_error
    from hires.pipeline import Result

    assert hires.JobError is job_error and hires.Result is Result
    assert "upscale" in hires.generate.__doc__ and "Returns" in hires.generate.__doc__
    assert "InputImage" not in hires.upscale.__doc__


def test_import_hires_stays_cheap():
    import subprocess
    import sys

    code = "import sys, hires; dir(hires); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ})
    assert done.stdout.strip() == "False", done.stderr


def test_a_missing_ip_image_is_said_first(tiny):
    with pytest.raises(JobError, match="^ip_image nope.png: no such file"):
        hires.generate("x", components=tiny, ip_image="nope.png", size=128, **ONE)


def test_upscale_takes_the_jobs_image(tiny, small):
    result = hires.upscale(job=hires.Job(image=str(small)), components=tiny, scale=2, **ONE)
    assert result.image.size == (192, 128) and result.source["path"] == str(small)


@pytest.mark.parametrize("call,words", [
    (lambda c, p: hires.generate("x", components=c, size=128, control_scale=0.5, **ONE),
     "^control_scale=0.5 has nothing to scale: add control=... and control_model=..., or "
     "leave it out$"),
    (lambda c, p: hires.generate("x", components=c, size=128, ip_scale=0.9, **ONE),
     "^ip_scale=0.9 has nothing to scale: add ip_image=..., or leave it out$"),
    (lambda c, p: hires.upscale(p, components=c, scale=2, control_scale=0.5, **ONE),
     "^control_scale=0.5 has nothing to scale: add control_model=..., or leave it out$"),
    (lambda c, p: hires.generate(image=str(p), components=c, scale=2, ip_scale=0.2, **ONE),
     "^ip_scale=0.2 has nothing to scale: add ip_image=..., or leave it out$"),
])
def test_a_strength_without_its_add_on_is_refused_as_the_cli_refuses_it(tiny, small, call,
                                                                         words):
    with pytest.raises(JobError, match=words):
        call(tiny, small)


def test_a_jobs_own_strength_is_a_default_and_passes(tiny):
    """As a preset's: only a strength given as a keyword asks for an add-on."""
    job = hires.Job(control_scale=0.5, ip_scale=0.9)
    result = hires.generate(job, components=tiny, prompt="x", size=128, **ONE)
    assert (result.job.control_scale, result.job.ip_scale) == (0.5, 0.9)


def test_numpy_numbers_are_numbers(tiny, small):
    """np.float32(0.5) and np.int64(3) were refused (np.float64, a float, was taken)."""
    import numpy as np

    result = hires.generate("x", components=tiny, size=np.int64(128), seed=np.int64(3),
                            steps=np.int32(1), guidance=np.float32(6.5), aspect=np.float32(2))
    assert (result.job.seed, result.job.steps, result.job.guidance) == (3, 1, 6.5)
    assert result.image.size == (128, 64)
    assert all(type(v) in (int, float) for v in (result.job.seed, result.job.steps,
                                                 result.job.guidance, result.job.width))
    up = hires.upscale(small, components=tiny, scale=np.float32(2), strength=np.float32(0.25),
                       seed=np.uint8(3), steps=np.int64(1))
    assert up.image.size == (192, 128) and type(up.job.strength) is float
    assert hires.Job(seed=np.int64(3), control_scale=np.float32(0.5)).validate().seed == 3


@pytest.mark.parametrize("setting,words", [
    ({"seed": np.float32(1.5)}, "seed must be a whole number"),
    ({"seed": np.True_}, "seed must be a whole number"),
    ({"guidance": torch.tensor(7.0)}, "guidance must be a number .* a tensor's .item"),
])
def test_what_is_not_a_number_of_its_kind_stays_refused(tiny, setting, words):
    with pytest.raises(JobError, match=words):
        hires.generate("x", components=tiny, size=128, **{**ONE, **setting})
    if "seed" in setting:  # a Job built directly: np.float32(1.5) was taken for seed 1
        with pytest.raises(JobError, match="'seed' in the job must be a whole number"):
            hires.Job(seed=setting["seed"]).validate()


def test_naming_the_ip_adapter_without_an_image_prompt_is_refused(tiny, small):
    """The default adapter, named, was taken and ignored (another one was refused); None is
    the default, not 'must be text'."""
    from hires.job import DEFAULT_IP_ADAPTER

    words = (f"^ip_adapter='{DEFAULT_IP_ADAPTER}' needs an image prompt: add ip_image=..., or "
             "leave it out$")
    with pytest.raises(JobError, match=words):
        hires.generate("x", components=tiny, size=128, ip_adapter=DEFAULT_IP_ADAPTER, **ONE)
    with pytest.raises(JobError, match=words):
        hires.upscale(small, components=tiny, scale=2, ip_adapter=DEFAULT_IP_ADAPTER, **ONE)
    # Not named: None, or a job's own field (as a record or preset fills it), is the default.
    result = hires.generate("x", components=tiny, size=128, ip_adapter=None, **ONE)
    assert result.job.ip_adapter == DEFAULT_IP_ADAPTER
    job = hires.Job(prompt="x", ip_adapter=DEFAULT_IP_ADAPTER)
    assert hires.generate(job, components=tiny, size=128, **ONE).job.ip_adapter == \
        DEFAULT_IP_ADAPTER
    assert hires.Job(ip_adapter=None).validate().ip_adapter == DEFAULT_IP_ADAPTER


def test_the_cli_refuses_ip_adapter_without_ip_image_too(tmp_path):
    from helpers_cli import assert_usage_error, cli

    from hires.job import DEFAULT_IP_ADAPTER

    result = cli("gen", "x", "--model", "tiny", "--size", "128", "--ip-adapter",
                 DEFAULT_IP_ADAPTER, "--dry-run")
    assert_usage_error(result, "--ip-adapter needs an image prompt: add --ip-image IMAGE, "
                               "or leave it out")
    preset = tmp_path / "ip.toml"
    preset.write_text(f'ip_image = "gone.png"\nip_adapter = "{DEFAULT_IP_ADAPTER}"\n')
    result = cli("gen", "x", "--model", "tiny", "--size", "128", "--preset", preset,
                 "--ip-adapter", "none", "--dry-run")
    assert result.exit_code == 0, result.stderr  # 'none' drops the preset's: it asks for none


def test_components_loaded_with_a_vae_run_a_job_that_names_none_and_record_it(tiny, tmp_path):
    """vae was not taken from the components as model is: vae=None was refused as one given
    ('drop vae=', which the call had not given)."""
    tiny.vae.save_pretrained(tmp_path / "vae")
    loaded = hires.load("tiny", vae=str(tmp_path / "vae"), device="cpu")
    result = hires.generate("x", components=loaded, size=128, **ONE)
    assert result.job.vae == str(tmp_path / "vae")


def test_a_path_with_two_dashes_is_not_taken_for_a_flag_in_a_librarys_message(tmp_path):
    """'--' inside a name was read as a flag: my--style.safetensors became mystyle."""
    ref = str(tmp_path / "loras" / "my--style-v2.safetensors")
    with pytest.raises(JobError) as refused:
        hires.generate("x", model="tiny", size=128, lora=ref, **ONE)
    assert ref in str(refused.value)
    from hires.library import keyword_words

    assert keyword_words("pass --allow-pickle (or --vae-tile 512)") == \
        "pass allow_pickle=True (or vae_tile 512)"
    for name in ("./--my-lora.safetensors: no such file", "x (--my-lora.safetensors)"):
        assert keyword_words(name) == name


def test_plan_counts_the_default_ip_adapter_named_without_its_image():
    """`hires plan --ip-adapter h94/IP-Adapter` was refused ("needs an image prompt") where
    another adapter was planned: a job could not tell the default named from none."""
    from helpers_cli import cli, json_lines

    from hires.job import DEFAULT_IP_ADAPTER

    def plan(*args: str):
        result = cli("plan", "x", "--size", "1024", "--gpu", "h100", "--json", *args)
        assert result.exit_code == 0, result.stderr
        return json_lines(result.stdout)[0], result.stderr

    (plain, _), (named, said) = plan(), plan("--ip-adapter", DEFAULT_IP_ADAPTER)
    other, _ = plan("--ip-adapter", "someone/their-ip-adapter")
    assert named["peak_bytes"] == other["peak_bytes"] > plain["peak_bytes"]
    assert "gen needs it (--ip-image IMAGE)" in said
    assert f"ip-adapter {DEFAULT_IP_ADAPTER}" in cli(
        "plan", "x", "--size", "1024", "--ip-adapter", DEFAULT_IP_ADAPTER).stdout
    # at scale 0 it is listed, not run, as another adapter is
    zero = cli("plan", "x", "--size", "1024", "--ip-adapter", DEFAULT_IP_ADAPTER, "--ip-scale",
               "0")
    assert zero.exit_code == 0 and "at scale 0 (not run)" in zero.stdout, zero.stderr


def test_a_preset_naming_the_default_ip_adapter_asks_for_it_as_one_naming_another(tmp_path):
    """A preset of `ip_adapter = "h94/IP-Adapter"` was dropped without a word (gen ran no
    adapter, plan planned none), where one naming another adapter was asked its image (found
    by QA)."""
    from helpers_cli import assert_usage_error, cli

    from hires.job import DEFAULT_IP_ADAPTER

    for name, adapter in (("default", DEFAULT_IP_ADAPTER), ("other", "someone/their-adapter")):
        preset = tmp_path / f"{name}.toml"
        preset.write_text(f'ip_adapter = "{adapter}"\nsize = 384\n')
        planned = cli("plan", "--model", "tiny", "--preset", preset)
        assert planned.exit_code == 0, planned.stderr
        assert f"ip-adapter {adapter}" in planned.stdout
        assert "gen needs it (--ip-image IMAGE)" in planned.stderr
        assert_usage_error(cli("gen", "x", "--model", "tiny", "--preset", preset, "--dry-run"),
                           f"'ip_adapter' in preset '{name}'", "needs --ip-image IMAGE")
        dropped = cli("gen", "x", "--model", "tiny", "--preset", preset, "--ip-adapter", "none",
                      "--dry-run")
        assert dropped.exit_code == 0 and "ip-adapter" not in dropped.stdout, dropped.stderr
