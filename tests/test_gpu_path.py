"""Speed choices of the big-image path, checked without a GPU: the VAE's dtype per device and
request, and the parallel PNG writer that saves 16K images several times faster than Pillow."""

import io
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from hires import models, output, png, strips, tiff
from hires.model_refs import ModelError
from hires.models import choose_vae_dtype

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


@pytest.fixture
def tf32_off():
    """TF32 for fp32 matmuls off for the test, then as it was (a global switch)."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = saved


def test_cuda_tuning_makes_vae_convolutions_channels_last_and_allows_tf32(tf32_off):
    """cuDNN's tensor-core convolutions are NHWC: the VAE's weights go channels-last (PyTorch
    then runs its convolutions NHWC), the UNet's stay as they are (slower so on an H200), and
    fp32 matmuls may use TF32; the VAE's output is the same (checked on the CPU)."""
    from hires.tiny import tiny_pipeline

    pipe = tiny_pipeline()
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = pipe.vae.decoder(x)
        models.tune_for_cuda(pipe)
        after = pipe.vae.decoder(x)
    assert torch.backends.cuda.matmul.allow_tf32
    def convs(net):
        return [m.weight for m in net.modules()
                if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]

    cl = torch.channels_last
    assert convs(pipe.vae) and all(w.is_contiguous(memory_format=cl) for w in convs(pipe.vae))
    assert not any(w.is_contiguous(memory_format=cl) for w in convs(pipe.unet))
    assert after.is_contiguous(memory_format=torch.channels_last)
    assert (after - before).abs().max() < 1e-4


def test_cuda_without_bf16_falls_back_to_fp32(bf16):
    bf16(False)
    assert choose_vae_dtype(CUDA, torch.float16) == torch.float32
    assert choose_vae_dtype(CUDA, torch.float16, "bf16") == torch.float32


def test_emulated_bf16_counts_as_unsupported(monkeypatch):
    # A T4 or V100: torch's default answer counts emulation as support.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: including_emulation)
    assert choose_vae_dtype(CUDA, torch.float16) == torch.float32


def test_cuda_fp32_only_when_asked(bf16):
    assert choose_vae_dtype(CUDA, torch.float16, "fp32") == torch.float32
    assert choose_vae_dtype(CUDA, torch.float16, "float32") == torch.float32
    assert choose_vae_dtype(CUDA, torch.float32) == torch.float32  # an fp32 model asks for it
    assert choose_vae_dtype(CUDA, torch.float32, "bf16") == torch.bfloat16


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("model", [torch.float32, torch.float16, torch.bfloat16])
def test_cpu_vae_is_bf16_only_with_native_bf16(bf16, monkeypatch, native, model):
    monkeypatch.setattr(models, "cpu_has_fast_bf16", lambda: native)
    assert choose_vae_dtype(CPU, model) == (torch.bfloat16 if native else torch.float32)
    assert choose_vae_dtype(CPU, model, "fp32") == torch.float32
    assert choose_vae_dtype(CPU, model, "bf16") == torch.bfloat16
    assert choose_vae_dtype(MPS, model) == torch.float32


def test_fast_bf16_means_native_bf16_dot_products(monkeypatch):
    caps = {"amx_tile": True, "avx512_bf16": True}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    assert models.cpu_has_fast_bf16()
    caps["amx_tile"] = False  # AVX512-BF16 alone (Zen 4/5): bf16 measured faster on Zen 5
    assert models.cpu_has_fast_bf16()
    caps["avx512_bf16"] = False  # AVX2 or plain AVX-512: torch emulates bf16
    assert not models.cpu_has_fast_bf16()


def test_fp16_and_unknown_requests_are_refused(bf16):
    for device in (CUDA, CPU):
        with pytest.raises(ModelError, match="fp16"):
            choose_vae_dtype(device, torch.float16, "fp16")
        with pytest.raises(ModelError, match="unknown VAE dtype"):
            choose_vae_dtype(device, torch.float16, "int8")


def test_a_vae_made_for_fp16_runs_in_fp16_where_bf16_is_missing(bf16):
    # madebyollin/sdxl-vae-fp16-fix and the like: force_upcast off in their config.
    assert choose_vae_dtype(CUDA, torch.float16, fp16_ok=True) == torch.bfloat16  # as fast, safer
    assert choose_vae_dtype(CUDA, torch.float16, "fp16", fp16_ok=True) == torch.float16
    bf16(False)  # T4, V100: fp16 on tensor cores instead of fp32 on CUDA cores
    assert choose_vae_dtype(CUDA, torch.float16, fp16_ok=True) == torch.float16
    assert choose_vae_dtype(CUDA, torch.float16, "bf16", fp16_ok=True) == torch.float16
    assert choose_vae_dtype(CUDA, torch.float16, "fp32", fp16_ok=True) == torch.float32
    assert choose_vae_dtype(MPS, torch.float16, fp16_ok=True) == torch.float16
    assert choose_vae_dtype(MPS, torch.float32, fp16_ok=True) == torch.float32
    with pytest.raises(ModelError, match="sdxl-vae-fp16-fix") as refused:
        choose_vae_dtype(CUDA, torch.float16, "fp16")
    assert refused.value.usage  # the options, not a load failure: exit 2


def test_bf16_support_is_not_asked_off_cuda(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("queried CUDA on a CPU path")

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", boom)
    monkeypatch.setattr(models, "cpu_has_fast_bf16", lambda: False)
    assert choose_vae_dtype(CPU, torch.float32) == torch.float32
    assert choose_vae_dtype(CPU, torch.float32, "bf16") == torch.bfloat16


@pytest.mark.parametrize("native", [True, False])
def test_tiny_model_on_cpu_loads_the_chosen_vae_dtype(monkeypatch, native):
    monkeypatch.setattr(models, "cpu_has_fast_bf16", lambda: native)
    want = torch.bfloat16 if native else torch.float32
    loaded = models.load("tiny", device="cpu", dtype="fp32")
    assert loaded.vae_dtype == want and loaded.vae.dtype == want
    assert loaded.unet.dtype == torch.float32
    loaded = models.load("tiny", device="cpu", dtype="bf16", vae_dtype="fp32")
    assert loaded.vae.dtype == torch.float32 and loaded.unet.dtype == torch.bfloat16


# --- the strip writers: PNG (hires.png) and TIFF (hires.tiff) -----------------------


def noisy(mode: str, width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(0)
    channels = len(mode)
    a = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    a[: height // 3] = 17  # a flat band: runs for the RLE strategy
    return Image.fromarray(a[..., 0] if channels == 1 else a, mode)


@pytest.mark.parametrize("write", [png.write_png, tiff.write_tiff])
@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
@pytest.mark.parametrize("size", [(1, 1), (97, 1), (1, 53), (129, 67)])
def test_strip_writers_round_trip_pixels_over_many_strips(monkeypatch, write, mode, size):
    monkeypatch.setattr(strips, "STRIP_BYTES", 700)  # many strips even for tiny images
    image = noisy(mode, *size)
    buf = io.BytesIO()
    write(image, buf, threads=3)
    buf.seek(0)
    with Image.open(buf) as back:
        back.load()
        assert back.mode == mode and back.size == image.size
        assert np.array_equal(np.asarray(back), np.asarray(image))
    if write is tiff.write_tiff:  # a second reader: tifffile, not libtiff
        import tifffile

        buf.seek(0)
        assert np.array_equal(tifffile.imread(buf).reshape(np.asarray(image).shape),
                              np.asarray(image))


@pytest.mark.parametrize("write", [png.write_png, tiff.write_tiff])
def test_strip_writers_bytes_do_not_depend_on_threads(monkeypatch, write):
    monkeypatch.setattr(strips, "STRIP_BYTES", 1000)
    image = noisy("RGB", 200, 90)
    one, many = io.BytesIO(), io.BytesIO()
    write(image, one, threads=1)
    write(image, many, threads=4)
    assert one.getvalue() == many.getvalue()


def test_adler32_combine_matches_zlib():
    rng = np.random.default_rng(1)
    for n_a, n_b in [(0, 5), (1, 1), (5000, 70000), (65521, 3)]:
        a, b = rng.bytes(n_a), rng.bytes(n_b)
        assert png.adler32_combine(zlib.adler32(a), zlib.adler32(b), n_b) == \
            zlib.adler32(a + b)


def test_saved_png_metadata_is_what_pillow_writes(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_itxt("parameters", "a fox\nSteps: 4, Seed: 1")
    info.add_itxt("hires", '{"job": {"seed": 1}}')
    ours, pillows = tmp_path / "ours.png", tmp_path / "pillow.png"
    image = noisy("RGB", 40, 30)
    with open(ours, "wb") as f:
        png.write_png(image, f, info)
    image.save(pillows, pnginfo=info)
    with Image.open(ours) as a, Image.open(pillows) as b:
        assert a.info == b.info and a.info["parameters"].startswith("a fox")
    assert png._png_text_chunks(info) in ours.read_bytes()


@pytest.mark.parametrize("make", [lambda: noisy("RGB", 30, 20).convert("P"),
                                  lambda: Image.new("I;16", (30, 20), 1000),
                                  lambda: noisy("LA", 30, 20)])
def test_other_modes_still_save_through_pillow(tmp_path, make):
    image = make()
    path = output.save_image(image, tmp_path / "a.png", metadata={"job": {"seed": 3}})
    with Image.open(path) as back:
        assert back.size == image.size
        assert np.array_equal(np.asarray(back.convert(image.mode)), np.asarray(image))
    assert output.read_metadata(path)["hires"] == {"job": {"seed": 3}}


def test_a_failing_strip_leaves_no_file(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(png.zlib, "compressobj", broken)
    with pytest.raises(output.OutputError, match="cannot write .*a.png: disk full"):
        output.save_image(noisy("RGB", 64, 64), tmp_path / "a.png")
    assert list(tmp_path.iterdir()) == []
