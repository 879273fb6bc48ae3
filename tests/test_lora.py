"""LoRAs on the tiny SDXL with LinFusion mounted: loading, scales, unloading, checks, errors."""

import hashlib

import pytest
import torch
from helpers_lora import unet_targets, write_tiny_lora
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file
from torch import nn

from hires.linfusion import LinearAttention
from hires.lora import LoraError, load_loras, parse_lora, resolve, unload_loras
from hires.model_refs import ModelError


@pytest.fixture(scope="module")
def pipe():
    """A tiny pipeline of this module's own: LoRAs never touch the session's shared one."""
    from hires.models import load

    # Layers this small run ~50x faster on one thread than on a busy machine's thread pool.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load("tiny", device="cpu").pipe
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def clean(request):
    """Every test starts and ends without LoRAs."""
    yield
    if "pipe" in request.fixturenames:
        unload_loras(request.getfixturevalue("pipe"))


def unet_out(pipe) -> torch.Tensor:
    """One UNet call on fixed small latents and conditioning."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 16, 16, generator=g)
    embeds = torch.randn(1, 77, 64, generator=g)
    added = {"text_embeds": torch.randn(1, 32, generator=g),
             "time_ids": torch.tensor([[256.0, 256.0, 0.0, 0.0, 256.0, 256.0]])}
    with torch.no_grad():
        return pipe.unet(x, torch.tensor([500.0]), encoder_hidden_states=embeds,
                         added_cond_kwargs=added, return_dict=False)[0]


def text_out(pipe) -> tuple[torch.Tensor, torch.Tensor]:
    """Both text encoders' outputs for a fixed prompt."""
    ids = torch.arange(1, 78).unsqueeze(0)
    with torch.no_grad():
        return (pipe.text_encoder(ids).last_hidden_state,
                pipe.text_encoder_2(ids).text_embeds)


def snapshot(pipe) -> dict:
    return {c: ({k: v.clone() for k, v in getattr(pipe, c).state_dict().items()},
                [(n, type(m)) for n, m in getattr(pipe, c).named_modules()])
            for c in ("unet", "text_encoder", "text_encoder_2")}


def peft_layers(module: nn.Module) -> list[str]:
    return [n for n, m in module.named_modules() if isinstance(m, BaseTunerLayer)]


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text and text
    return text


# --- applying ---------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["kohya", "sgm", "diffusers"])
def test_lora_changes_unet_and_text_encoders(pipe, tmp_path, layout):
    base_unet, base_text = unet_out(pipe), text_out(pipe)
    targets = len(unet_targets(pipe.unet))
    file = write_tiny_lora(tmp_path / "style.safetensors", pipe, layout=layout)
    records = load_loras(pipe, [str(file)])
    lora_unet, lora_text = unet_out(pipe), text_out(pipe)
    assert not torch.allclose(lora_unet, base_unet, atol=1e-4)
    for base, lora in zip(base_text, lora_text, strict=True):
        assert not torch.allclose(lora, base, atol=1e-4)
    assert torch.isfinite(lora_unet).all()
    assert torch.equal(unet_out(pipe), lora_unet)  # deterministic
    attn1 = sum(isinstance(m, LinearAttention) for m in pipe.unet.modules())
    assert records == [{
        "ref": str(file), "scale": 1.0, "sha256": hashlib.sha256(file.read_bytes()).hexdigest(),
        "adapter": "hires_0", "unet_modules": targets,
        "text_encoder_modules": 24, "linfusion_modules": 4 * attn1}]
    # Loading again (what load_loras does first: unload) gives the very same model.
    load_loras(pipe, [str(file)])
    assert torch.equal(unet_out(pipe), lora_unet)


def test_layouts_agree(pipe, tmp_path):
    """The same weights in kohya (alpha = rank) and diffusers layouts give the same output."""
    diffusers_file = write_tiny_lora(tmp_path / "d.safetensors", pipe, layout="diffusers")
    load_loras(pipe, [str(diffusers_file)])
    expected = unet_out(pipe)
    kohya = write_tiny_lora(tmp_path / "k.safetensors", pipe, layout="kohya")
    state = {k: torch.tensor(4.0) if k.endswith(".alpha") else v
             for k, v in load_file(kohya).items()}  # alpha = rank: scaling 1 like diffusers'
    save_file(state, tmp_path / "k1.safetensors")
    load_loras(pipe, [str(tmp_path / "k1.safetensors")])
    torch.testing.assert_close(unet_out(pipe), expected)


@pytest.mark.parametrize("layout", ["kohya", "sgm"])
def test_each_layers_alpha_is_its_own(pipe, tmp_path, layout):
    """A layer's alpha that differed from the others' was dropped with a peft warning (diffusers
    names it by module names transformers 5 and peft no longer use): alpha 0 ran at the
    common alpha. Now alpha 0 is that layer off, and a layer without one has its rank."""
    import warnings

    file = write_tiny_lora(tmp_path / "style.safetensors", pipe, layout=layout)
    state = load_file(file)
    te = "lora_te1_text_model_encoder_layers_0_mlp_fc1"
    unet = next(k[:-len(".alpha")] for k in state if k.startswith("lora_unet_")
                and k.endswith(".alpha") and "attn2" in k)
    other = next(k[:-len(".alpha")] for k in state if k.startswith("lora_te2_")
                 and k.endswith(".alpha"))

    def outputs(changes: dict[str, torch.Tensor | None], name: str, suffix: str = ""):
        changed = {k: v for k, v in {**state, **changes}.items() if v is not None}
        if suffix:
            torch.save(changed, tmp_path / f"{name}{suffix}")
        else:
            save_file(changed, tmp_path / f"{name}.safetensors")
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            load_loras(pipe, [str(tmp_path / f"{name}{suffix or '.safetensors'}")],
                       allow_pickle=True)
        assert not [w for w in said if "alpha" in str(w.message)]
        return unet_out(pipe), *text_out(pipe)

    off = {f"{te}.alpha": torch.tensor(0.0), f"{unet}.alpha": torch.tensor(0.0),
           f"{other}.alpha": None}
    zeroed = {f"{te}.lora_up.weight": torch.zeros_like(state[f"{te}.lora_up.weight"]),
              f"{unet}.lora_up.weight": torch.zeros_like(state[f"{unet}.lora_up.weight"]),
              f"{other}.alpha": torch.tensor(4.0)}  # the rank: scale 1
    expected = outputs(zeroed, "zeroed")
    assert not torch.allclose(expected[0], outputs({}, "as_written")[0], atol=1e-4)
    for suffix in ("", ".pt"):
        for got, want in zip(outputs(off, "off", suffix), expected, strict=True):
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize("broken", ["two-number alpha", "1-D up weight", "inf", "nan",
                                    "fp16 overflow"])
def test_a_malformed_layer_beside_differing_alphas_is_refused_in_one_line(pipe, tmp_path,
                                                                         broken):
    """Folding the alphas met these first and raised Python's own errors (exit 1: 'only one
    element tensors can be converted', 'tuple index out of range')."""
    state = load_file(write_tiny_lora(tmp_path / "style.safetensors", pipe))
    layers = sorted(k[:-len(".alpha")] for k in state if k.endswith(".alpha"))
    state[f"{layers[1]}.alpha"] = torch.tensor(7.0)  # the alphas differ
    if broken == "two-number alpha":
        state[f"{layers[0]}.alpha"] = torch.tensor([1.0, 2.0])
    elif broken in ("inf", "nan"):  # ran with the alphas unfolded (exit 0), or made NaN
        state[f"{layers[0]}.alpha"] = torch.tensor(float(broken))
    elif broken == "fp16 overflow":  # 100 x 60000 is past fp16's 65504: a NaN image
        state[f"{layers[0]}.alpha"] = torch.tensor(60000.0)
        state[f"{layers[0]}.lora_up.weight"] = torch.full_like(
            state[f"{layers[0]}.lora_up.weight"], 100.0).half()
    else:
        del state[f"{layers[0]}.alpha"]
        state[f"{layers[0]}.lora_up.weight"] = state[f"{layers[0]}.lora_up.weight"][:, 0].clone()
    save_file(state, tmp_path / "broken.safetensors")
    with pytest.raises(LoraError) as e:
        load_loras(pipe, [str(tmp_path / "broken.safetensors")])
    assert "broken.safetensors" in one_line(e)
    if broken in ("inf", "nan"):
        assert f"the alpha of {layers[0]} is {broken}, not a finite number" in str(e.value)
    if broken == "fp16 overflow":
        assert f"the alpha of {layers[0]} (60000) makes its weights overflow float16" in str(
            e.value)


def test_scale_zero_is_exactly_no_lora(pipe, tmp_path):
    base_unet, base_text = unet_out(pipe), text_out(pipe)
    file = write_tiny_lora(tmp_path / "style.safetensors", pipe)
    load_loras(pipe, [f"{file}:0"])
    assert peft_layers(pipe.unet)
    assert torch.equal(unet_out(pipe), base_unet)
    for base, lora in zip(base_text, text_out(pipe), strict=True):
        assert torch.equal(lora, base)


def test_unload_restores_bit_for_bit(pipe, tmp_path):
    before = snapshot(pipe)
    base = unet_out(pipe)
    a = write_tiny_lora(tmp_path / "a.safetensors", pipe, layout="kohya")
    b = write_tiny_lora(tmp_path / "b.safetensors", pipe, layout="diffusers", seed=1)
    load_loras(pipe, [str(a), f"{b}:0.5"])
    unload_loras(pipe)
    after = snapshot(pipe)
    for component, (state, types) in before.items():
        new_state, new_types = after[component]
        assert new_types == types, component
        assert new_state.keys() == state.keys(), component
        assert all(torch.equal(new_state[k], v) for k, v in state.items()), component
        assert not getattr(getattr(pipe, component), "peft_config", None)
    assert torch.equal(unet_out(pipe), base)
    unload_loras(pipe)  # nothing loaded: a no-op


def test_linfusion_projections_are_patched(pipe, tmp_path):
    records = load_loras(pipe, [str(write_tiny_lora(tmp_path / "s.safetensors", pipe))])
    attns = [m for m in pipe.unet.modules() if isinstance(m, LinearAttention)]
    assert attns and records[0]["linfusion_modules"] == 4 * len(attns)
    for attn in attns:
        for proj in (attn.to_q, attn.to_k, attn.to_v, attn.to_out[0]):
            assert isinstance(proj, BaseTunerLayer) and "hires_0" in proj.lora_A
        for mlp in (attn.to_q_, attn.to_k_):  # LinFusion's own MLPs stay as they are
            assert not peft_layers(mlp)
            assert all(type(m) is nn.Linear for m in mlp if isinstance(m, nn.Linear))


def test_attn1_only_lora_changes_the_output(pipe, tmp_path):
    """attn1 weights reach LinFusion's attention: a LoRA of nothing else changes the UNet."""
    base = unet_out(pipe)
    full = load_file(write_tiny_lora(tmp_path / "all.safetensors", pipe, layout="kohya"))
    save_file({k: v for k, v in full.items() if "_attn1_" in k}, tmp_path / "attn1.safetensors")
    records = load_loras(pipe, [str(tmp_path / "attn1.safetensors")])
    assert records[0]["unet_modules"] == records[0]["linfusion_modules"] > 0
    assert records[0]["text_encoder_modules"] == 0
    assert not torch.allclose(unet_out(pipe), base, atol=1e-4)


def test_two_loras_with_scales_both_apply(pipe, tmp_path):
    a = write_tiny_lora(tmp_path / "a.safetensors", pipe, layout="kohya")  # alpha/rank = 1/2
    b = write_tiny_lora(tmp_path / "b.safetensors", pipe, layout="diffusers", seed=1,
                        text_encoder=False)
    load_loras(pipe, [f"{a}:0.7"])
    only_a = unet_out(pipe)
    load_loras(pipe, [f"{b}:1.3"])
    only_b = unet_out(pipe)
    records = load_loras(pipe, [f"{a}:0.7", f"{b}:1.3"])
    both = unet_out(pipe)
    assert [r["scale"] for r in records] == [0.7, 1.3]
    assert [r["text_encoder_modules"] for r in records] == [24, 0]
    assert not torch.allclose(both, only_a, atol=1e-4)
    assert not torch.allclose(both, only_b, atol=1e-4)
    to_q = pipe.unet.get_submodule("mid_block.attentions.0.transformer_blocks.0.attn1.to_q")
    assert to_q.scaling == pytest.approx({"hires_0": 0.35, "hires_1": 1.3})
    q_proj = pipe.text_encoder.get_submodule("encoder.layers.0.self_attn.q_proj")
    assert q_proj.scaling == pytest.approx({"hires_0": 0.35})


# --- naming and finding -----------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "expected"), [
    ("style.safetensors", ("style.safetensors", 1.0)),
    ("style.safetensors:0.8", ("style.safetensors", 0.8)),
    ("style.safetensors:-1", ("style.safetensors", -1.0)),
    ("style.safetensors:1e-1", ("style.safetensors", 0.1)),
    ("owner/repo", ("owner/repo", 1.0)),
    ("owner/repo:2", ("owner/repo", 2.0)),
    ("owner/repo/lora.safetensors:.5", ("owner/repo/lora.safetensors", 0.5)),
    (r"C:\loras\x.safetensors", (r"C:\loras\x.safetensors", 1.0)),
    (r"C:\loras\x.safetensors:0.3", (r"C:\loras\x.safetensors", 0.3)),
    ("C:/loras/x.safetensors", ("C:/loras/x.safetensors", 1.0)),
])
def test_parse_lora(spec, expected):
    assert parse_lora(spec) == expected


@pytest.mark.parametrize(("spec", "message"), [
    ("style.safetensors:abc", "must be a number, not 'abc'"),
    ("style.safetensors:", "must be a number"),
    ("style.safetensors:inf", "from -10 to 10"),
    ("style.safetensors:1e9", "from -10 to 10"),
    ("style.safetensors:nan", "from -10 to 10"),
    (":0.5", "no file, folder or Hub id"),
    ("", "no file, folder or Hub id"),
    # it was looked for as a file named 'none'
    ("none:0.5", "'none' drops the LoRAs and takes no scale; write none alone"),
])
def test_parse_lora_errors(spec, message):
    with pytest.raises(LoraError, match=message) as e:
        parse_lora(spec)
    one_line(e)


def test_parse_lora_keeps_an_existing_file_with_a_colon(tmp_path):
    file = tmp_path / "style:v2"
    file.write_bytes(b"")
    assert parse_lora(str(file)) == (str(file), 1.0)


def test_resolve_folders(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "x.safetensors").write_bytes(b"")
    (tmp_path / "one" / "README.md").write_text("")
    assert resolve(str(tmp_path / "one")) == tmp_path / "one" / "x.safetensors"
    (tmp_path / "one" / "pytorch_lora_weights.safetensors").write_bytes(b"")
    assert resolve(str(tmp_path / "one")).name == "pytorch_lora_weights.safetensors"
    (tmp_path / "two").mkdir()
    for name in ("a.safetensors", "b.safetensors"):
        (tmp_path / "two" / name).write_bytes(b"")
    with pytest.raises(LoraError, match="holds 2 weights files .*a.safetensors, b.safetensors.*"
                       "name the one") as e:
        resolve(str(tmp_path / "two"))
    one_line(e)
    (tmp_path / "none").mkdir()
    with pytest.raises(LoraError, match="no .safetensors file"):
        resolve(str(tmp_path / "none"))
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "pytorch_lora_weights.bin").write_bytes(b"")
    with pytest.raises(LoraError, match="--allow-pickle"):
        resolve(str(tmp_path / "pickled"))
    assert resolve(str(tmp_path / "pickled"), allow_pickle=True).suffix == ".bin"


@pytest.mark.parametrize("ref", ["missing.safetensors", "./missing", "dir/missing.safetensors"])
def test_missing_file(tmp_path, monkeypatch, ref):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LoraError, match=f"LoRA file not found: {ref}") as e:
        resolve(ref)
    one_line(e)


def test_hub_lora_not_cached_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    for ref in ("someone/some-lora", "someone/some-lora/style.safetensors"):
        with pytest.raises(ModelError, match="not in the local Hugging Face cache") as e:
            resolve(ref)
        one_line(e)


def test_hub_lora_online_picks_from_the_repositorys_top_level_files(tmp_path, monkeypatch):
    """One model_info request lists the files (list_repo_files retried for about 25 s when the
    Hub could not be reached); files in subfolders are not candidates."""
    from types import SimpleNamespace

    import huggingface_hub
    from huggingface_hub import constants

    files = ["README.md", "sub/a.safetensors", "pytorch_lora_weights.safetensors",
             "other.safetensors"]

    def model_info(self, repo, **kwargs):
        return SimpleNamespace(siblings=[SimpleNamespace(rfilename=f) for f in files])

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo, name, **kw: str(tmp_path / repo / name))
    assert resolve("someone/some-lora") == tmp_path / "someone/some-lora" / files[2]


def test_hub_lora_unreachable_online_says_so(tmp_path, monkeypatch):
    """Not offline by the setting, but no answer: the HTTP library's connection error (not
    huggingface_hub's) ended the run as 'ConnectError: ...'; the cache decides, as offline."""
    import huggingface_hub
    from huggingface_hub import constants

    def unreachable(self, repo, **kwargs):
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", unreachable)
    with pytest.raises(ModelError, match="not in the local Hugging Face cache") as e:
        resolve("someone/some-lora")
    one_line(e)


def test_a_hub_file_in_a_repo_is_not_taken_for_a_missing_local_file():
    from hires.addons import check_inputs
    from hires.job import Job, JobError

    # the Hub's (loads=False: the cache, which has no such file here, is not this test's)
    check_inputs(Job(prompt="x", lora=["someone/some-lora/style.safetensors:0.8"]), loads=False)
    with pytest.raises(JobError, match="--lora dir/style.safetensors: no such file"):
        check_inputs(Job(prompt="x", lora=["dir/style.safetensors"]))


def test_hub_lora_from_the_cache(tmp_path, monkeypatch):
    """Offline, a cached Hub LoRA resolves: the repo's preferred file, or the one named."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--someone--some-lora"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("pytorch_lora_weights.safetensors", "other.safetensors"):
        (snapshot / name).write_bytes(b"")
    assert resolve("someone/some-lora") == snapshot / "pytorch_lora_weights.safetensors"
    assert resolve("someone/some-lora/other.safetensors") == snapshot / "other.safetensors"
    with pytest.raises(LoraError, match="--allow-pickle"):
        resolve("someone/some-lora/lora.bin")


# --- refusing ---------------------------------------------------------------------------------


def test_lora_for_another_model_names_the_first_misfit(pipe, tmp_path):
    state = load_file(write_tiny_lora(tmp_path / "s.safetensors", pipe, layout="kohya"))
    wide = {k: v if k.endswith(".alpha") else (
        v.repeat(1, 2) if "lora_down" in k else v.repeat(2, 1)) for k, v in state.items()}
    save_file(wide, tmp_path / "wide.safetensors")
    good = write_tiny_lora(tmp_path / "good.safetensors", pipe)
    with pytest.raises(LoraError) as e:
        load_loras(pipe, [str(good), str(tmp_path / "wide.safetensors")])
    assert one_line(e).startswith(
        f"LoRA {tmp_path / 'wide.safetensors'} does not fit this model: down_blocks.1.attentions.0"
        ".transformer_blocks.0.attn1.to_k is 64 -> 64 but the LoRA has 128 -> 128 (a LoRA for "
        "another base model?)")
    assert not peft_layers(pipe.unet) and not peft_layers(pipe.text_encoder)  # checked first


def test_lora_for_a_module_the_model_lacks(pipe, tmp_path):
    state = load_file(write_tiny_lora(tmp_path / "s.safetensors", pipe, layout="diffusers"))
    key = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"
    state[key.replace("down_blocks.1", "down_blocks.7")] = state.pop(key)
    state[key.replace("down_blocks.1", "down_blocks.7").replace("lora_A", "lora_B")] = (
        state.pop(key.replace("lora_A", "lora_B")))
    save_file(state, tmp_path / "other.safetensors")
    load_loras(pipe, [str(tmp_path / "s.safetensors")])
    loaded = unet_out(pipe)
    with pytest.raises(LoraError, match=r"down_blocks\.7\.attentions\.0\.transformer_blocks\.0"
                       r"\.attn1\.to_q is not a module of this model") as e:
        load_loras(pipe, [str(tmp_path / "other.safetensors")])
    one_line(e)
    assert torch.equal(unet_out(pipe), loaded)  # refused before anything changed


def test_pickle_lora_needs_allow_pickle(pipe, tmp_path):
    file = write_tiny_lora(tmp_path / "s.safetensors", pipe, layout="kohya")
    load_loras(pipe, [str(file)])
    expected = unet_out(pipe)
    for suffix in (".bin", ".pt"):
        pickled = tmp_path / f"s{suffix}"
        torch.save(load_file(file), pickled)
        with pytest.raises(LoraError, match="pickle.*--allow-pickle") as e:
            load_loras(pipe, [str(pickled)])
        one_line(e)
        unload_loras(pipe)
        records = load_loras(pipe, [str(pickled)], allow_pickle=True)
        assert records[0]["sha256"] == hashlib.sha256(pickled.read_bytes()).hexdigest()
        assert torch.equal(unet_out(pipe), expected)


def test_pickle_renamed_safetensors_is_not_unpickled(pipe, tmp_path):
    file = write_tiny_lora(tmp_path / "s.safetensors", pipe)
    torch.save(load_file(file), tmp_path / "disguised.safetensors")
    with pytest.raises(LoraError, match="not a readable safetensors file") as e:
        load_loras(pipe, [str(tmp_path / "disguised.safetensors")])
    one_line(e)


@pytest.mark.parametrize("state", [
    {"foo": torch.zeros(3), "bar.weight": torch.ones(2, 2)},
    {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4)},  # a checkpoint
    {"unet.conv_in.weight": torch.zeros(4)},  # prefixed, but no LoRA layer
])
def test_not_a_lora(pipe, tmp_path, state):
    save_file(state, tmp_path / "x.safetensors")
    with pytest.raises(LoraError, match="is not an SDXL LoRA") as e:
        load_loras(pipe, [str(tmp_path / "x.safetensors")])
    one_line(e)
    assert not peft_layers(pipe.unet)


def test_garbage_file(pipe, tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(LoraError, match="not a readable safetensors file") as e:
        load_loras(pipe, [str(tmp_path / "x.safetensors")])
    one_line(e)


def test_no_loras_is_a_no_op(pipe):
    assert load_loras(pipe, []) == []
    assert not peft_layers(pipe.unet)
