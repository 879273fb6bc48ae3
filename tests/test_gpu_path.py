"""The GPU-path choices, decided without a GPU: the VAE's dtype per device and request."""

import pytest
import torch

from hires.models import ModelError, choose_vae_dtype

CUDA, CPU, MPS = torch.device("cuda"), torch.device("cpu"), torch.device("mps")


@pytest.fixture
def bf16(monkeypatch):
    """Pretend CUDA bf16 support is present (or not)."""

    def set_supported(supported: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)

    set_supported(True)
    return set_supported


@pytest.mark.parametrize("model", [torch.float16, torch.bfloat16])
def test_cuda_vae_runs_bf16_by_default(bf16, model):
    assert choose_vae_dtype(CUDA, model) == torch.bfloat16
    assert choose_vae_dtype(CUDA, model, "auto") == torch.bfloat16
    assert choose_vae_dtype(torch.device("cuda:1"), model) == torch.bfloat16


def test_cuda_without_bf16_falls_back_to_fp32(bf16):
    bf16(False)
    assert choose_vae_dtype(CUDA, torch.float16) == torch.float32
    assert choose_vae_dtype(CUDA, torch.float16, "bf16") == torch.float32


def test_cuda_fp32_only_when_asked(bf16):
    assert choose_vae_dtype(CUDA, torch.float16, "fp32") == torch.float32
    assert choose_vae_dtype(CUDA, torch.float16, "float32") == torch.float32
    assert choose_vae_dtype(CUDA, torch.float32) == torch.float32  # an fp32 model asks for it
    assert choose_vae_dtype(CUDA, torch.float32, "bf16") == torch.bfloat16


@pytest.mark.parametrize("device", [CPU, MPS])
@pytest.mark.parametrize("model", [torch.float32, torch.float16, torch.bfloat16])
def test_cpu_and_mps_keep_fp32(bf16, device, model):
    assert choose_vae_dtype(device, model) == torch.float32


def test_fp16_and_unknown_requests_are_refused(bf16):
    for device in (CUDA, CPU):
        with pytest.raises(ModelError, match="fp16"):
            choose_vae_dtype(device, torch.float16, "fp16")
        with pytest.raises(ModelError, match="unknown VAE dtype"):
            choose_vae_dtype(device, torch.float16, "int8")


def test_bf16_support_is_not_asked_off_cuda(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("queried CUDA on a CPU path")

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", boom)
    assert choose_vae_dtype(CPU, torch.float32) == torch.float32
    assert choose_vae_dtype(CPU, torch.float32, "bf16") == torch.bfloat16


def test_tiny_model_on_cpu_loads_an_fp32_vae():
    from hires.models import load

    loaded = load("tiny", device="cpu", dtype="bf16")
    assert loaded.vae_dtype == torch.float32 and loaded.vae.dtype == torch.float32
    assert loaded.unet.dtype == torch.bfloat16
