"""LinFusion: the attention maths, the checkpoint format, mounting on a UNet, clear errors."""

import json

import diffusers
import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file

from hires.linfusion import (
    LinearAttention,
    LinFusion,
    LinFusionError,
    checkpoint_for,
    distillation_warning,
    linear_attention,
)
from hires.sdxl import SDXL_UNET_CONFIG
from hires.tiny import tiny_unet


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are small: one thread avoids stalls at thread barriers on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def brute_force(q, k, v, heads, eps=1e-4):
    """The definition, with the full N x N kernel matrix: sum_j (Qf.Kf_j) V_j / (sum + eps N)."""
    qf, kf, vh = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))
    qf, kf = F.elu(qf) + 1, F.elu(kf) + 1
    kernel = qf @ kf.transpose(-1, -2)  # B x h x N x N
    out = kernel @ vh / (kernel.sum(-1, keepdim=True) + eps * k.shape[1])
    return out.transpose(1, 2).flatten(2)


def module_forward(tensors, prefix, x, heads):
    """A LinFusion module's forward written from raw checkpoint tensors, in the test's own code."""
    t = {key[len(prefix):]: value.to(x.dtype) for key, value in tensors.items()
         if key.startswith(prefix)}

    def mlp(name, h):
        h = F.linear(h, t[f"{name}.0.weight"], t[f"{name}.0.bias"])
        h = F.layer_norm(h, h.shape[-1:], t[f"{name}.1.weight"], t[f"{name}.1.bias"])
        return F.linear(F.leaky_relu(h, 0.01), t[f"{name}.3.weight"], t[f"{name}.3.bias"])

    q = F.linear(x + mlp("to_q_", x), t["to_q.weight"])
    k = F.linear(x + mlp("to_k_", x), t["to_k.weight"])
    v = F.linear(x, t["to_v.weight"])
    return F.linear(brute_force(q, k, v, heads), t["to_out.0.weight"], t["to_out.0.bias"])


def unet_output(unet):
    torch.manual_seed(1)
    with torch.no_grad():
        return unet(torch.randn(1, 4, 32, 32), torch.tensor(500.0),
                    encoder_hidden_states=torch.randn(1, 77, 64),
                    added_cond_kwargs={"text_embeds": torch.randn(1, 32),
                                       "time_ids": torch.tensor([[256.0, 256, 0, 0, 256, 256]])},
                    ).sample


def write_official_checkpoint(folder, unet, dtype=torch.float16, seed=0):
    """A checkpoint in the published format, from this test's own key names and config."""
    gen = torch.Generator().manual_seed(seed)
    modules_list, tensors = [], {}
    attn1 = [(n, m) for n, m in unet.named_modules() if n.endswith("attn1")]
    for i, (name, module) in enumerate(attn1):
        dim, mid = module.to_q.out_features, module.to_q.out_features // 8
        modules_list.append({"module_name": name, "dim_n": dim, "heads": module.heads,
                             "projection_mid_dim": mid})
        shapes = {"to_q.weight": (dim, dim), "to_k.weight": (dim, dim), "to_v.weight": (dim, dim),
                  "to_out.0.weight": (dim, dim), "to_out.0.bias": (dim,)}
        for mlp in ("to_q_", "to_k_"):
            shapes.update({f"{mlp}.0.weight": (mid, dim), f"{mlp}.0.bias": (mid,),
                           f"{mlp}.1.weight": (mid,), f"{mlp}.1.bias": (mid,),
                           f"{mlp}.3.weight": (dim, mid), f"{mlp}.3.bias": (dim,)})
        for key, shape in shapes.items():
            tensors[f"{i}.{key}"] = (torch.randn(shape, generator=gen) * 0.1).to(dtype)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"_class_name": "LinFusion", "_diffusers_version": "0.30.0",
              "modules_list": modules_list}
    (folder / "config.json").write_text(json.dumps(config))
    save_file(tensors, folder / "diffusion_pytorch_model.safetensors")
    return tensors, modules_list


# --- the attention ------------------------------------------------------------------------------


@pytest.mark.parametrize("tokens", [1, 7, 64, 300])
@pytest.mark.parametrize("heads", [1, 2, 5])
def test_linear_attention_matches_the_definition(tokens, heads):
    torch.manual_seed(tokens * 10 + heads)
    q, k, v = (torch.randn(2, tokens, heads * 8, dtype=torch.float64) * 2 for _ in range(3))
    expected = brute_force(q, k, v, heads)
    for tile in (None, 1, 5, 64):  # tiles of tokens: the last one partial, or all in one
        out = linear_attention(q, k, v, heads, tile_tokens=tile)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
    # The training path (autograd through out-of-place ops) computes the same thing.
    q.requires_grad_(True)
    out = linear_attention(q, k, v, heads)
    torch.testing.assert_close(out.detach(), expected, rtol=0, atol=1e-10)
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_queries_and_keys_may_differ_in_length():
    q, k, v = torch.randn(1, 5, 16, dtype=torch.float64), *torch.randn(2, 1, 9, 16).double()
    torch.testing.assert_close(linear_attention(q, k, v, 2), brute_force(q, k, v, 2),
                               rtol=0, atol=1e-10)


def test_repeating_every_token_changes_nothing():
    """Means, not sums: the same content at 4x the tokens attends the same way."""
    torch.manual_seed(0)
    module = LinearAttention(64, 2, projection_mid_dim=16).double()
    x = torch.randn(2, 50, 64, dtype=torch.float64)
    with torch.no_grad():
        out = module(x)
        repeated = module(x.repeat_interleave(4, dim=1))
    for copy in range(4):
        torch.testing.assert_close(repeated[:, copy::4], out, rtol=0, atol=1e-12)
    # Called as attn1 by a transformer block: extra arguments are accepted and ignored.
    with torch.no_grad():
        called = module(x, encoder_hidden_states=None, attention_mask=torch.ones(2, 50), scale=1)
    assert torch.equal(called, out)


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
def test_half_precision_accumulates_in_fp32(dtype, tol):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 300, 40).to(dtype) for _ in range(3))
    out = linear_attention(q, k, v, 5)
    assert out.dtype == dtype
    expected = brute_force(q.double(), k.double(), v.double(), 5)
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)

    # 16384 tokens of large values: fp16 sums of Kf^T V would overflow (65504) many times over.
    q, k, v = (torch.randn(1, 16384, 128) * 30 for _ in range(3))
    half = [t.to(dtype) for t in (q, k, v)]
    out = linear_attention(*half, 2)
    assert torch.isfinite(out).all()
    expected = linear_attention(*(t.double() for t in half), 2)  # checked against brute force
    scale = expected.abs().max()
    torch.testing.assert_close(out.double() / scale, expected / scale, rtol=0, atol=tol)


def test_bad_shapes_are_clear():
    with pytest.raises(ValueError, match="heads"):
        linear_attention(*torch.randn(3, 1, 4, 30), heads=4)
    with pytest.raises(ValueError, match="heads"):
        LinearAttention(30, 4)


# --- the checkpoint format ----------------------------------------------------------------------


def test_official_format_loads_and_reproduces_the_module(tmp_path):
    unet = tiny_unet()
    tensors, modules_list = write_official_checkpoint(tmp_path / "ckpt", unet)
    lf = LinFusion.load(tmp_path / "ckpt")
    assert lf.modules_list == modules_list
    state = lf.state_dict()
    assert set(state) == set(tensors) and len(state) == 17 * 11
    assert all(torch.equal(state[key], tensors[key]) for key in tensors)  # dtype kept (fp16)

    lf = LinFusion.load(tmp_path / "ckpt", dtype=torch.float64)
    x = torch.randn(2, 33, 64, dtype=torch.float64)
    for i, entry in enumerate(modules_list):
        with torch.no_grad():
            out = getattr(lf, str(i))(x)
        expected = module_forward(tensors, f"{i}.", x, entry["heads"])
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)


def test_save_load_round_trip_is_exact(tmp_path):
    unet = tiny_unet()
    lf = LinFusion.from_unet(unet, projection_mid_dim=8, init_from_unet=False)
    lf.save(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert set(config) == {"_class_name", "_diffusers_version", "modules_list"}
    assert config["_class_name"] == "LinFusion"
    assert config["_diffusers_version"] == diffusers.__version__
    expected = [dict(e, projection_mid_dim=8) for e in LinFusion.default_config(unet)]
    assert config["modules_list"] == expected

    loaded = LinFusion.load(tmp_path / "saved")
    assert loaded.modules_list == lf.modules_list
    ours, theirs = lf.state_dict(), loaded.state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)
    raw = load_file(tmp_path / "saved" / "diffusion_pytorch_model.safetensors")
    assert set(raw) == set(ours) and all(t.is_contiguous() for t in raw.values())


def _one_line_error(folder, *needles):
    """The load's one-line error, said by the dry run's check (check_ref, no tensors read)
    too: a mismatch of weights and config.json passed it, and the run failed."""
    from hires.linfusion import check_ref

    for attempt in (LinFusion.load, check_ref):
        with pytest.raises(LinFusionError) as info:
            attempt(folder)
        message = str(info.value)
        assert "\n" not in message
        for needle in needles:
            assert needle in message, (attempt, message)
    return message


def test_wrong_shape_and_renamed_tensor_are_named(tmp_path):
    unet = tiny_unet()
    tensors, modules_list = write_official_checkpoint(tmp_path / "ckpt", unet)
    weights = tmp_path / "ckpt" / "diffusion_pytorch_model.safetensors"

    bad = dict(tensors, **{"3.to_q.weight": torch.zeros(64, 32, dtype=torch.float16)})
    save_file(bad, weights)
    _one_line_error(tmp_path / "ckpt", "3.to_q.weight", "(64, 32)", modules_list[3]["module_name"])

    renamed = dict(tensors)
    renamed["2.to_k_.O.weight"] = renamed.pop("2.to_k_.0.weight")
    save_file(renamed, weights)
    _one_line_error(tmp_path / "ckpt", "2.to_k_.0.weight", "2.to_k_.O.weight")

    save_file(dict(tensors, **{"11.to_q.weight": torch.zeros(1)}), weights)
    _one_line_error(tmp_path / "ckpt", "unexpected", "11.to_q.weight")


def test_bad_folders_are_clear(tmp_path):
    _one_line_error(tmp_path / "nowhere" / "deeper" / "ckpt", "no such folder")
    _one_line_error(tmp_path, "config.json")
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    _one_line_error(tmp_path, "not a LinFusion checkpoint")
    (tmp_path / "config.json").write_text(json.dumps(
        {"_class_name": "LinFusion", "modules_list": [{"module_name": "a.attn1", "dim_n": 64,
                                                        "heads": 2}]}))
    (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    _one_line_error(tmp_path, "safetensors", "diffusion_pytorch_model.bin")


def test_uncached_hub_checkpoint_offline_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LinFusionError) as info:
        LinFusion.load("Yuanshi/LinFusion-XL", cache_dir=tmp_path / "hub")
    message = str(info.value)
    assert "\n" not in message
    assert "Yuanshi/LinFusion-XL" in message and "cache" in message
    assert "--linfusion none" in message


# --- mounting -----------------------------------------------------------------------------------


def test_mount_replaces_exactly_attn1_and_unmount_restores():
    unet = tiny_unet().eval()
    before = unet_output(unet)
    originals = {n: m for n, m in unet.named_modules() if n.endswith(("attn1", "attn2"))}

    lf = LinFusion.from_unet(unet).mount(unet)
    assert lf.mounted
    attn1 = {n: m for n, m in unet.named_modules() if n.endswith("attn1")}
    assert len(attn1) == 11 and all(isinstance(m, LinearAttention) for m in attn1.values())
    assert list(attn1.values()) == list(lf.children())
    for name, module in unet.named_modules():
        if name.endswith("attn2"):
            assert module is originals[name]
    during = unet_output(unet)
    assert during.shape == before.shape and torch.isfinite(during).all()
    assert not torch.equal(during, before)
    with pytest.raises(LinFusionError, match="already mounted"):
        lf.mount(unet)

    lf.unmount(unet)
    assert not lf.mounted
    for name, module in unet.named_modules():
        if name.endswith(("attn1", "attn2")):
            assert module is originals[name]
    assert torch.equal(unet_output(unet), before)
    with pytest.raises(LinFusionError, match="not mounted"):
        lf.unmount(unet)


def test_from_unet_starts_from_the_original_projections():
    unet = tiny_unet()
    lf = LinFusion.from_unet(unet)
    first = unet.get_submodule(lf.modules_list[0]["module_name"])
    ours = lf.get_submodule("0")
    assert torch.equal(ours.to_q.weight, first.to_q.weight)
    assert torch.equal(ours.to_out[0].bias, first.to_out[0].bias)
    x = torch.randn(1, 5, 64)
    assert torch.equal(ours.to_q_(x), torch.zeros_like(x))  # the residual MLP starts at zero


def test_mount_errors_name_the_module(tmp_path):
    unet = tiny_unet()
    config = LinFusion.default_config(unet)
    wrong_name = [dict(config[0], module_name="down_blocks.9.attentions.0.transformer_blocks.0"
                                              ".attn1")]
    with pytest.raises(LinFusionError, match=r"down_blocks\.9.*not found"):
        LinFusion(wrong_name).mount(unet)

    wrong_dim = [dict(config[0], dim_n=128)]
    with pytest.raises(LinFusionError) as info:
        LinFusion(wrong_dim).mount(unet)
    assert str(info.value) == (f"module {config[0]['module_name']}: checkpoint has dim 128 / 2 "
                               "heads, the UNet has 64 / 2")

    not_self = [dict(config[0], module_name=config[0]["module_name"][:-1] + "2")]
    with pytest.raises(LinFusionError, match="attn1"):
        LinFusion(not_self).mount(unet)

    # The same, through a checkpoint on disk: it loads, and mounting names the module.
    write_official_checkpoint(tmp_path / "ckpt", unet)
    path = tmp_path / "ckpt" / "config.json"
    saved = json.loads(path.read_text())
    saved["modules_list"][4]["module_name"] = "mid_block.attentions.7.attn1"
    path.write_text(json.dumps(saved))
    with pytest.raises(LinFusionError, match=r"mid_block\.attentions\.7\.attn1"):
        LinFusion.load(tmp_path / "ckpt").mount(unet)
    assert not any(isinstance(m, LinearAttention) for m in unet.modules())  # all or nothing


# --- SDXL at full size (meta device: shapes only) -----------------------------------------------


@pytest.fixture(scope="module")
def sdxl_unet():
    with torch.device("meta"):
        return UNet2DConditionModel(**SDXL_UNET_CONFIG)


def test_sdxl_default_config_matches_the_spec(sdxl_unet):
    config = LinFusion.default_config(sdxl_unet)
    block = "attentions.{}.transformer_blocks.{}.attn1"
    expected = (
        [(f"down_blocks.1.{block.format(a, t)}", 640, 10) for a in range(2) for t in range(2)]
        + [(f"down_blocks.2.{block.format(a, t)}", 1280, 20) for a in range(2) for t in range(10)]
        + [(f"up_blocks.0.{block.format(a, t)}", 1280, 20) for a in range(3) for t in range(10)]
        + [(f"up_blocks.1.{block.format(a, t)}", 640, 10) for a in range(3) for t in range(2)]
        + [(f"mid_block.{block.format(0, t)}", 1280, 20) for t in range(10)]
    )
    assert [(e["module_name"], e["dim_n"], e["heads"]) for e in config] == expected
    assert all(e["projection_mid_dim"] is None for e in config)

    for entry in config:
        entry["projection_mid_dim"] = entry["dim_n"] // 16  # LinFusion-XL: 40 and 80
    with torch.device("meta"):
        lf = LinFusion(config)
    state = lf.state_dict()
    assert len(state) == 1190
    assert round(sum(t.numel() for t in state.values()) / 1e6, 1) == 435.5
    assert checkpoint_for(None, sdxl_unet) == "Yuanshi/LinFusion-XL"


def test_default_checkpoints_and_distillation_warning():
    unet = tiny_unet()
    sdxl = "stabilityai/stable-diffusion-xl-base-1.0"
    assert checkpoint_for(sdxl, unet) == "Yuanshi/LinFusion-XL"
    assert checkpoint_for("runwayml/stable-diffusion-v1-5", unet) == "Yuanshi/LinFusion-1-5"
    assert checkpoint_for("someone/unknown", unet) is None  # tiny: no public checkpoint fits

    assert distillation_warning(sdxl, "Yuanshi/LinFusion-XL") is None
    assert distillation_warning("runwayml/stable-diffusion-v1-5", "Yuanshi/LinFusion-1-5") is None
    assert distillation_warning("someone/my-sdxl-finetune", "/my/own/linfusion") is None
    for model in ("someone/my-sdxl-finetune", None):
        warning = distillation_warning(model, "Yuanshi/LinFusion-XL")
        assert warning and "\n" not in warning
        assert sdxl in warning
        assert "--linfusion PATH|HUB_ID" in warning and "--linfusion none" in warning


def test_a_checkpoint_that_leaves_some_attention_quadratic_is_refused():
    """A checkpoint of fewer modules mounted without a word: the UNet's other attn1 stayed
    softmax attention, quadratic in the pixels the planner priced as linear."""
    unet = tiny_unet()
    config = LinFusion.default_config(unet)
    with pytest.raises(LinFusionError) as info:
        LinFusion(config[:-1]).mount(unet)
    assert str(info.value) == (
        f"this LinFusion checkpoint covers {len(config) - 1} of the UNet's {len(config)} "
        f"self-attention modules (not {config[-1]['module_name']}); is it for another base "
        "model?")
    assert not any(isinstance(m, LinearAttention) for m in unet.modules())  # all or nothing


def test_a_checkpoint_is_matched_to_a_unet_config_before_either_loads(sdxl_unet):
    from hires.linfusion import config_mismatch

    config = LinFusion.default_config(sdxl_unet)
    assert config_mismatch(config, SDXL_UNET_CONFIG) is None
    assert config_mismatch(config[::-1], SDXL_UNET_CONFIG) is None  # in any order
    assert "it covers 69 of the model's UNet's 70 self-attention modules (not " \
        "mid_block.attentions.0.transformer_blocks.9.attn1)" in config_mismatch(
            config[:-1], SDXL_UNET_CONFIG)
    assert "lists module down_blocks.1.attentions.0.transformer_blocks.0.attn1 twice" in \
        config_mismatch([*config[:-1], config[0]], SDXL_UNET_CONFIG)
    assert "module down_blocks.9.attn1 is not in the model's UNet" in config_mismatch(
        [*config, dict(config[0], module_name="down_blocks.9.attn1")], SDXL_UNET_CONFIG)
    narrow = [dict(e, dim_n=640) if e["module_name"].startswith("mid_block") else e
              for e in config]
    assert config_mismatch(narrow, SDXL_UNET_CONFIG) == (
        "module mid_block.attentions.0.transformer_blocks.0.attn1: the checkpoint's has width "
        "640 and 20 heads, the model's UNet's 1280 and 20: is it for another base model?")


def test_a_dry_run_refuses_a_checkpoint_for_another_unet(tiny_folder, tmp_path):
    """It passed, and the run failed after the model loaded (minutes with SDXL)."""
    from helpers_cli import assert_usage_error, cli

    tensors, _ = write_official_checkpoint(tmp_path / "lf", tiny_unet())
    path = tmp_path / "lf" / "config.json"
    saved = json.loads(path.read_text())
    saved["modules_list"] = saved["modules_list"][:-1]
    path.write_text(json.dumps(saved))
    last = f"{len(saved['modules_list'])}."  # its weights as well: the checkpoint is whole
    save_file({k: v for k, v in tensors.items() if not k.startswith(last)},
              tmp_path / "lf" / "diffusion_pytorch_model.safetensors")
    for model in (tiny_folder, "tiny"):  # the builtin model's config too
        result = cli("gen", "x", "--model", model, "--linfusion", tmp_path / "lf",
                     "--size", "256", "--dry-run")
        assert_usage_error(result, f"LinFusion checkpoint {tmp_path / 'lf'} does not fit",
                           "it covers 10 of the model's UNet's 11 self-attention modules")
