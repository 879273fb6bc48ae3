"""Job validation, sizes from --size/--aspect, and preset merging."""

import pytest

from hires.job import Job, JobError, size_from


@pytest.mark.parametrize("w,message", [(0, "positive"), (-8, "positive"), (1001, "multiple of 8"),
                                       (40000, "at most 32768"), (32, "at least 64")])
def test_bad_sizes(w, message):
    with pytest.raises(JobError, match=message):
        Job(width=w).validate()


@pytest.mark.parametrize("side,hint", [(1001, "try 1000 or 1008"), (32769, "try 32768"),
                                       (60, "try 64"), (3, "try 64")])
def test_a_side_off_the_grid_suggests_only_sides_hires_takes(side, hint):
    with pytest.raises(JobError, match=f"multiple of 8, got {side}; {hint}$"):
        Job(width=side, height=512).validate()


def test_sizes_from_long_side_and_aspect():
    assert size_from(4096, "16:9", None, None) == (4096, 2304)
    assert size_from(4096, "9:16", None, None) == (2304, 4096)
    assert size_from(2048, None, None, None) == (2048, 2048)
    assert size_from(None, None, 3000, 1000) == (3000, 1000)
    assert size_from(None, None, None, None) is None
    with pytest.raises(JobError, match="both"):
        size_from(None, None, 3000, None)
    with pytest.raises(JobError, match="aspect"):
        size_from(2048, "wide", None, None)


def test_unknown_key_names_the_closest():
    with pytest.raises(JobError, match="did you mean 'strength'"):
        Job.from_dict({"strenght": 0.3})


def test_merge_overrides_and_coerces():
    job = Job.from_dict({"steps": 30, "guidance": 5}).merged({"steps": 20})
    assert job.steps == 20 and job.guidance == 5.0 and isinstance(job.guidance, float)
    with pytest.raises(JobError, match="steps"):
        Job.from_dict({"steps": "many"})


@pytest.mark.parametrize("key,value", [("steps", 1.0), ("vae_tile", 256.0), ("depth", 16.0),
                                       ("quality", 90.0)])
def test_a_whole_number_with_a_decimal_point_in_a_file_is_refused_as_a_seeds_is(key, value):
    """JSON writers' 1.0 for 1: `"steps": 1.0` ran where `"seed": 5.0` and `"size": 64.0` were
    refused; a Job built in Python still takes it (validate makes it an int)."""
    with pytest.raises(JobError, match=f"^'{key}' in preset 'p' must be a whole number.* "
                       f"\\(write it without a decimal point\\), got {value}$"):
        Job.from_dict({key: value}, where="preset 'p'")
    taken = getattr(Job().merged({key: value}), key)  # not from a file: made an int
    assert taken == int(value) and isinstance(taken, int)


@pytest.mark.parametrize("key,value,what", [
    ("steps", "30", "a whole number"), ("guidance", "7.5", "a number"),
    ("strength", "0.5", "a number"), ("vram", "24", "a number"), ("quality", "90", "a whole")])
def test_a_number_in_quotes_in_a_file_is_refused_as_seed_and_size_are(key, value, what):
    """`steps = "1"` in a batch file or preset ran with 1 step, where `seed = "3"` and
    `size = "64"` were refused: a TOML or JSON file's numbers are written as numbers."""
    with pytest.raises(JobError, match=f"^'{key}' in preset 'p' must be {what}.* \\(write it "
                       f"without quotes\\), got \"{value}\"$"):
        Job.from_dict({key: value}, where="preset 'p'")


def test_no_quotes_hint_where_the_text_is_no_number_or_the_value_no_ones_writing():
    with pytest.raises(JobError, match=r'must be a whole number, got "nan"$'):
        Job.from_dict({"steps": "nan"}, where="preset 'p'")
    with pytest.raises(JobError, match=r"^'steps' in metadata of x.png must be a whole number, "
                                       r'got "30"$'):  # a damaged record: no one wrote it
        Job.from_dict({"steps": "30"}, where="metadata of x.png")
    with pytest.raises(JobError, match=r"\(write it without quotes\)"):  # a file so named
        Job.from_dict({"steps": "30"}, where="metadata.toml job 0")


@pytest.mark.parametrize("key,value,what", [
    ("negative", ["blurry", "dark"], "text"), ("prompt", 5, "text"), ("model", 5, "text"),
    ("karras", "yes please", "true or false"), ("karras", "ture", "true or false"),
    ("karras", 2, "true or false"), ("vae", {"path": "x"}, "text")])
def test_a_value_of_the_wrong_kind_is_an_error_not_a_conversion(key, value, what):
    with pytest.raises(JobError, match=f"'{key}' in preset 'p' must be {what}"):
        Job.from_dict({key: value}, where="preset 'p'")


def test_true_false_words_and_paths_are_taken():
    from pathlib import Path

    assert Job.from_dict({"karras": "Yes"}).karras is True
    assert Job.from_dict({"karras": "off"}).karras is False
    assert Job.from_dict({"karras": 1}).karras is True
    assert Job().merged({"image": Path("in.png")}).image == "in.png"


def test_the_valid_keys_listed_are_each_once_and_for_people():
    from hires.job import closest_hint

    hint = closest_hint("zzzzqqq", ["width", "height", "image_sha256", "steps", "width"])
    assert hint == " (valid: width, height, steps)"


def test_a_job_built_directly_gets_each_value_of_its_kind_at_validate():
    job = Job(karras="no", lora="style.safetensors", strength="0.5", seed="7").validate()
    assert (job.karras, job.lora, job.strength, job.seed) == (False, ["style.safetensors"], 0.5, 7)
    for bad in ({"guidance": None}, {"prompt": None}, {"device": None}, {"vram": "x"}):
        with pytest.raises(JobError, match=f"'{next(iter(bad))}' in the job must be"):
            Job(**bad).validate()


def test_a_lora_may_be_a_path_or_a_list_of_paths():
    """lora=Path(...) was refused ('must be text or a list of text, got PosixPath')."""
    from pathlib import Path

    assert Job().merged({"lora": Path("x.safetensors")}).lora == ["x.safetensors"]
    assert Job(lora=[Path("a.safetensors"), "b.safetensors:0.5"]).validate().lora == [
        "a.safetensors", "b.safetensors:0.5"]
    with pytest.raises(JobError, match="'lora' in the job must be text or a list of text"):
        Job(lora=[Path("a.safetensors"), 5]).validate()


def test_a_vae_tile_that_shows_seams_is_refused_and_auto_is_the_planners_pick():
    """64-192 px tiles were taken and left a grid of seams (35 8-bit steps at 64 px); there
    was no way to undo a preset's or a record's tile."""
    for tile in (64, 128, 248):
        with pytest.raises(JobError, match="from 256 to 32768 .smaller tiles show seams"):
            Job(vae_tile=tile).validate()
    assert Job(vae_tile=256).validate().vae_tile == 256
    assert Job(vae_tile=512).merged({"vae_tile": "auto"}).vae_tile is None
    assert Job().merged({"vae_tile": "512"}).vae_tile == 512
    with pytest.raises(JobError, match="'vae_tile' in preset must be a whole number or auto"):
        Job().merged({"vae_tile": "big"}, where="preset")


def test_seeds_are_the_32_bits_the_noise_generator_reads():
    """Seeds up to 2**63-1 were taken, and seed s + k * 2**32 made seed s's image."""
    import torch

    same = [torch.randn(4, generator=torch.Generator("cpu").manual_seed(s)) for s in (0, 2**32)]
    assert torch.equal(*same)  # why: torch's CPU generator reads the low 32 bits
    assert Job(seed=2**32 - 1).validate().seed == 2**32 - 1
    with pytest.raises(JobError, match=r"^seed must be between 0 and 4294967295, got 4294967296 "
                                       r"\(the noise generator reads 32 bits: its image is "
                                       r"seed 0's\)$"):
        Job(seed=2**32).validate()
