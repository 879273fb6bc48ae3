"""What README.md promises, where an audit of it found the code short of it."""

import pickle

import pytest
from helpers_cli import assert_usage_error, cli, write

import hires
from hires.job import JobError


@pytest.mark.parametrize("key, value, said", [
    ("model", "missing-model.safetensors", "'model' in"),  # by its key, as README says
    ("vae", "missing-vae.safetensors", "'vae' in"),
    ("linfusion", "./missing-linfusion", "LinFusion checkpoint"),
])
def test_batch_dry_run_refuses_a_path_that_is_not_there(tmp_path, key, value, said):
    # README, Batches: "a `model`, `vae` or `linfusion` path that is not there (exit 2, in
    # `--dry-run` too)". The dry run planned such jobs and exited 0 (or 1 for LinFusion).
    jobs = write(tmp_path / "jobs.toml",
                 '[defaults]\nmodel = "tiny"\nsize = 256\nsteps = 2\n\n'
                 '[[job]]\nprompt = "fine"\n\n'
                 f'[[job]]\nprompt = "broken"\n{key} = "{tmp_path / value}"\n')
    result = cli("batch", jobs, "-o", tmp_path / "out", "--dry-run", "-q")
    assert_usage_error(result, "jobs.toml job 1", said)
    assert not (tmp_path / "out").exists()


def test_a_pickle_model_without_allow_pickle_is_a_usage_error(tmp_path):
    # README: "pickle files without `--allow-pickle` exit 2 with one line"; a pickled --model
    # exited 1, as if loading had failed.
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(pickle.dumps({}))  # a pickle by its bytes, not a model
    result = cli("gen", "a fox", "--model", checkpoint, "--size", "256", "--steps", "2",
                 "-o", tmp_path / "fox.png", "-q")
    assert_usage_error(result, "model.ckpt is a pickle checkpoint", "--allow-pickle")
    assert not (tmp_path / "fox.png").exists()


@pytest.mark.parametrize("size", ["256", 256.0, True])
def test_library_size_of_the_wrong_kind_says_what_it_got(size):
    # A text "256" was refused as "size must be a positive number of pixels, got 256", and
    # True as "a multiple of 8, got True": neither says what to pass instead.
    with pytest.raises(JobError) as caught:
        hires.generate("a fox", size=size, steps=2)
    assert str(caught.value) == f"size must be a whole number of pixels, got {size!r}"


def test_info_says_plain_attention_for_a_job_without_linfusion(tmp_path):
    # README: `--linfusion none` runs plain attention; `hires info` printed "linfusion None".
    components = hires.load("tiny", linfusion="none")
    path = tmp_path / "plain.png"
    hires.generate("a fox", size=64, steps=1, seed=1, components=components).save(path)
    result = cli("info", path)
    assert result.exit_code == 0, result.stderr
    (line,) = [ln for ln in result.stdout.splitlines() if ln.startswith("model ")]
    assert line.startswith("model tiny, linfusion none (plain attention),")  # then precisions


def test_dry_runs_refuse_what_the_run_would_before_planning(tmp_path):
    # gen --dry-run planned a pickle --model the run refuses (exit 0), and plan exited 1 on a
    # --linfusion path that is not there. plan loads nothing, so a pickle is no risk there.
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(pickle.dumps({}))  # a pickle by its bytes, not a model
    for args in (("gen", "x", "--dry-run", "-o", tmp_path / "x.png"),
                 ("up", str(_small_png(tmp_path)), "--scale", "2", "--dry-run")):
        for flag in ("--model", "--vae"):
            result = cli(*args, flag, checkpoint, *(("--model", "tiny") if flag == "--vae"
                                                   else ()))
            assert_usage_error(result, f"{flag} model.ckpt is a pickle checkpoint",
                               "--allow-pickle")
    allowed = cli("gen", "x", "--dry-run", "--model", checkpoint, "--allow-pickle",
                  "-o", tmp_path / "x.png")
    assert allowed.exit_code == 0, allowed.stderr
    assert cli("plan", "--model", checkpoint).exit_code == 0
    assert_usage_error(cli("plan", "--model", "tiny", "--linfusion", tmp_path / "missing"),
                       "LinFusion checkpoint")


def _small_png(tmp_path):
    from PIL import Image

    path = tmp_path / "in.png"
    Image.new("RGB", (96, 64)).save(path)
    return path


@pytest.mark.parametrize("args, said", [
    (("--control", "missing.png", "--control-model", "diffusers/controlnet-canny-sdxl-1.0"),
     "--control missing.png: no such file"),
    (("--ip-image", "missing.jpg"), "--ip-image missing.jpg: no such file"),
])
def test_an_add_on_image_that_is_not_there_is_refused_before_any_loading(tmp_path, monkeypatch,
                                                                          args, said):
    # A name like "missing.png" was taken for a Hub id and let through: the dry run planned,
    # and the run loaded the model (and tried the add-on's download) before the image failed.
    monkeypatch.chdir(tmp_path)
    for dry in (("--dry-run",), ()):
        result = cli("gen", "x", "--model", "tiny", *args, *dry, "-o", tmp_path / "x.png")
        assert_usage_error(result, said)
