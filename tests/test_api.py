"""The library's own front door: `hires.generate` and `hires.upscale` take what their docs say
and refuse the rest with a message, not an error from deep inside."""

import pytest
from PIL import Image

import hires
from hires.job import DEFAULT_MODEL, JobError

ONE = {"steps": 1, "seed": 5}



def test_a_prompt_as_the_first_argument_and_size_with_aspect(tiny):
    result = hires.generate("a fox", components=tiny, size=256, aspect="2:1", **ONE)
    assert result.image.size == (256, 128) and result.job.prompt == "a fox"


def test_the_record_names_the_model_that_ran(tiny):
    # Without model=..., the job's default (SDXL base) was recorded: --from fetched SDXL.
    result = hires.generate("a fox", components=tiny, width=256, height=256, **ONE)
    assert result.job.model == "tiny"
    # Naming what was loaded is fine; so is a folder by another spelling of its path.
    result = hires.generate("a fox", components=tiny, model="tiny", dtype="fp32",
                            device="cpu", width=256, height=256, **ONE)
    assert (result.job.model, result.job.dtype, result.job.device) == ("tiny", "fp32", "cpu")


def test_a_job_with_an_input_image_is_an_upscale(tiny, small):
    result = hires.generate("x", components=tiny, image=str(small), width=192, height=128, **ONE)
    assert result.image.size == (192, 128) and result.source["path"] == str(small)
    assert [s.psnr is not None for s in result.stages] == [True]


@pytest.mark.parametrize("call,error,words", [
    (lambda c: hires.generate("x", components=c, width=256), JobError,
     "^width and height go together; give both \\(or use size\\)"),  # keywords, not flags
    (lambda c: hires.generate("x", components=c, aspect="16:9"), JobError, "^aspect needs size"),
    (lambda c: hires.generate({"prompt": "x"}, components=c), TypeError, "hires.Job or a prompt"),
    (lambda c: hires.generate("x", components="tiny"), TypeError, "model=..."),
    (lambda c: hires.generate("x", components=c, progress=5), TypeError, "progress must be"),
    (lambda c: hires.generate("x", components=c, image="/nonexistent.png", width=192,
                              height=128), ValueError, "no such file"),
    # A script's config passed with loaded components: theirs would run, its own be recorded.
    (lambda c: hires.generate("x", components=c, model="stabilityai/sdxl-turbo", **ONE),
     JobError, "model='stabilityai/sdxl-turbo', but the components were loaded with model"),
    (lambda c: hires.generate("x", components=c, dtype="fp16", **ONE), JobError,
     "dtype='fp16', but the components were loaded with dtype 'fp32'"),
    (lambda c: hires.generate("x", components=c, device="cuda", **ONE), JobError,
     "device='cuda', but the components were loaded with device 'cpu'"),
    (lambda c: hires.generate("a fox", prompt="a cat", components=c), TypeError,
     "prompt was given twice"),
    # Callbacks are checked before the first stage, not when it ends.
    (lambda c: hires.generate("x", components=c, on_stage_image=5), TypeError,
     "on_stage_image must be a function of"),
    (lambda c: hires.generate("x", components=c, on_stage_image=lambda image: None),
     TypeError, r"on_stage_image is called with \(index, image\)"),
    # progress too: it failed at the first step, after the load and the prompt's encoding
    (lambda c: hires.generate("x", components=c, progress=lambda: 0), TypeError,
     r"^progress is called with \(event\): give a function that takes it$"),
    # the default model named, not left out: checked as any other name (it ran tiny)
    (lambda c: hires.generate("x", components=c, model=DEFAULT_MODEL, **ONE), JobError,
     f"model='{DEFAULT_MODEL}', but the components were loaded with model 'tiny'"),
])
def test_generate_refuses_what_it_cannot_use(tiny, call, error, words):
    with pytest.raises(error, match=words):
        call(tiny)


@pytest.mark.parametrize("image,sizes,error,words", [
    (None, {"scale": 2}, TypeError, "image file's path"),
    (Image.new("RGB", (8, 8)), {"scale": 2}, TypeError, "save an in-memory image"),
    ("{small}", {"scale": "2"}, JobError, "scale must be a positive number"),
    ("{small}", {"scale": float("inf")}, JobError, "scale must be a positive number"),
    ("{small}", {"scale": True}, JobError, "scale must be a positive number"),
    ("{small}", {"size": -256}, JobError, "size must be a positive"),
    ("{small}", {"size": 250}, JobError, "multiple of 8"),
    ("{small}", {}, JobError, "^give one of size, scale, width/height or print_size"),  # not --size
    ("{small}", {"scale": 2, "on_score": 3}, TypeError, "on_score must be a function"),
    ("{small}", {"scale": 2, "on_score": lambda psnr: None}, TypeError, "on_score is called"),
    ("{small}", {"scale": 2, "progress": lambda a, b: None}, TypeError, "progress is called"),
])
def test_upscale_refuses_what_it_cannot_use(tiny, small, image, sizes, error, words):
    image = str(small) if image == "{small}" else image
    with pytest.raises(error, match=words):
        hires.upscale(image, components=tiny, **sizes)


def test_vae_tile_auto_is_the_planner_s_pick_again(tiny):
    """The refusal of vae_tile=100 offers "or auto", which the keyword refused as no int."""
    made = hires.generate(hires.Job(prompt="x", vae_tile=256), components=tiny,
                          vae_tile="auto", **ONE)
    assert made.job.vae_tile is None
    with pytest.raises(JobError, match="or auto; got 100"):
        hires.generate("x", components=tiny, vae_tile=100, **ONE)


def test_load_takes_a_path_and_refuses_what_the_cli_refuses(tiny_folder):
    from pathlib import Path

    assert hires.load(Path(tiny_folder)).model == str(tiny_folder)
    with pytest.raises(JobError, match="offload must be one of"):
        hires.load("tiny", offload="bad")
    with pytest.raises(JobError, match="^model must be text"):
        hires.load(None)


def test_generate_and_upscale_take_a_print_size(tiny, small):
    made = hires.generate("x", components=tiny, print_size="20x10mm", **ONE)
    assert made.image.size == (240, 120) and made.job.dpi == 300  # 236 x 118 px at 300 dpi
    up = hires.upscale(small, components=tiny, print_size="2x1in", dpi=100, **ONE)
    assert up.image.size == (144, 96) and up.job.dpi == 100  # 96x64 fitted into 200 x 96 px
    with pytest.raises(JobError, match="print_size sets both sides: drop scale"):
        hires.upscale(small, components=tiny, print_size="A4", scale=2)
    with pytest.raises(JobError, match="print_size sets both sides: drop size"):
        hires.generate("x", components=tiny, print_size="A4", size=1024)


def test_result_save_speaks_of_its_keywords_not_the_clis_flags(tiny, tmp_path):
    from hires.output import OutputExists, OutputUsage

    result = hires.generate("x", components=tiny, size=128, **ONE)
    result.save(tmp_path / "a.png")
    (tmp_path / "file").write_text("")
    for call, error, words in [
        (lambda: result.save(tmp_path / "a.png"), OutputExists,
         "already exists; pass overwrite=True or choose another path"),
        (lambda: result.save(tmp_path / "b.png", format="jpg"), OutputUsage,
         "b.png names a PNG file but format is 'jpg'"),
        (lambda: result.save(tmp_path / "file" / "c.png"), OutputUsage,
         "a file is in the way; choose another path"),
        (lambda: result.save(tmp_path / "file" / "deeper" / "c.png"), OutputUsage,
         "a file is in the way; choose another path"),
    ]:
        with pytest.raises(error) as caught:
            call()
        message = str(caught.value)
        assert words in message and "--" not in message and "-o " not in message, message
    # the README's error for a path at fault (it was a plain ValueError)
    with pytest.raises(OutputUsage, match="save needs a file's path"):
        result.save("")  # it said ". already exists"
    with pytest.raises(OutputUsage, match="kept no stage images; make it with save_stages"):
        result.save(tmp_path / "g.png", save_stages=True)
    assert not (tmp_path / "g.png").exists()
    # format= as generate takes it (a TypeError); record.save's own keywords (settings=,
    # recorded_as=, stage=, warn=) wrote what a caller made up into the record
    assert result.save(tmp_path / "d", format="jpg")["path"] == str(tmp_path / "d.jpg")
    assert result.save(tmp_path / "f", format="jpg", fmt=None)["path"] == str(tmp_path / "f.jpg")
    with pytest.raises(TypeError, match="takes format= or fmt= .one option, two names., not both"):
        result.save(tmp_path / "g", format="jpg", fmt="png")
    for made_up in ({"settings": "x"}, {"recorded_as": "-"}, {"stage": 0}):
        with pytest.raises(TypeError, match=f"not {next(iter(made_up))}=$"):
            result.save(tmp_path / "e.png", **made_up)
    assert not (tmp_path / "e.png").exists()


def test_result_save_fills_a_template_as_o_does(tiny, tmp_path):
    result = hires.generate("A red fox", components=tiny, size=128, **ONE)
    record = result.save(tmp_path / "{seed}_{prompt}_{width}.{format}")
    assert record["path"] == str(tmp_path / "5_a-red-fox_128.png")
    assert (tmp_path / "5_a-red-fox_128.png").is_file()


def test_loading_through_the_library_prints_no_library_notices():
    """transformers' notice that torchvision is missing, logged as diffusers' SDXL pipeline is
    first imported, is not for a script's stderr (a fresh process: it is logged once)."""
    import subprocess
    import sys

    code = "import hires; hires.load('tiny')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stderr == "", done.stderr


@pytest.fixture(scope="module")
def controlnet(tmp_path_factory, tiny):
    """A tiny ControlNet folder, made offline."""
    from helpers_control import tiny_controlnet

    folder = tmp_path_factory.mktemp("api-addons") / "control-net"
    tiny_controlnet(tiny.unet).save_pretrained(folder)
    return str(folder)


def test_upscale_feeds_its_input_to_a_controlnet_as_hires_up_does(tiny, small, controlnet,
                                                                   tmp_path, asked):
    """control_model without control was refused ('needs control'), though `hires up
    --control-model` runs: the input image was set after the checks."""
    import numpy as np
    from helpers_cli import cli

    from hires.job import JobError

    Image.effect_noise((96, 64), 40).convert("RGB").save(small)  # something to follow
    out = tmp_path / "up.png"
    made = cli("up", small, "--scale", "2", "--model", "tiny", "--steps", "2", "--seed", "1",
               "--control-model", controlnet, "-o", out, "-q")
    assert made.exit_code == 0, made.stderr
    with Image.open(out) as im:
        expected = np.asarray(im.convert("RGB"))
    common = dict(scale=2, components=tiny, steps=2, seed=1, control_model=controlnet)
    for result in (hires.upscale(small, **common),
                   hires.generate(image=str(small), **common)):
        assert result.addons["controlnet"]["image"] == str(small)
        assert np.array_equal(np.asarray(result.image), expected)
    plain = hires.upscale(small, scale=2, components=tiny, steps=2, seed=1)
    assert not np.array_equal(np.asarray(plain.image), expected)  # the ControlNet ran
    with pytest.raises(JobError, match="control_model needs control"):
        hires.generate("x", components=tiny, size=128, control_model=controlnet, **ONE)


def test_a_lora_may_be_given_as_a_path(tiny, tmp_path):
    import numpy as np
    from helpers_lora import write_tiny_lora

    path = write_tiny_lora(tmp_path / "style.safetensors", tiny.pipe)
    common = dict(components=tiny, size=128, **ONE)
    by_text = hires.generate("x", lora=[str(path)], **common)
    for lora in (path, [path]):
        result = hires.generate("x", lora=lora, **common)
        assert result.job.lora == [str(path)] and "lora" in result.addons
        assert np.array_equal(np.asarray(result.image), np.asarray(by_text.image))
