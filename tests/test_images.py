"""Input images for `hires up` (hires/images.py): formats, orientation, alpha, bit depths, CMYK,
broken files, the size bound, PSNR and fidelity. Every input is built in tmp_path from a photo."""

import hashlib
import math
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile
from skimage import data

from hires.images import (
    MAX_PIXELS,
    MAX_SIDE,
    ImageInputError,
    attach_alpha,
    fidelity,
    load_input,
    psnr,
)


@pytest.fixture(scope="module")
def photo():
    """A small real photo (astronaut, 96x80: not square, so rotations show)."""
    return Image.fromarray(data.astronaut()).resize((96, 80), Image.Resampling.LANCZOS)


@pytest.fixture(scope="module")
def smooth():
    """A smooth photo (coffee, 150x100) for the fidelity figure."""
    return Image.fromarray(data.coffee()).resize((150, 100), Image.Resampling.LANCZOS)


def arr(im):
    return np.asarray(im).astype(np.int32)


def one_line_error(path, match=None):
    with pytest.raises(ImageInputError) as info:
        load_input(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg, msg
    if match:
        assert match in msg, msg
    return msg


@pytest.mark.parametrize("fmt,suffix,opts,exact", [
    ("PNG", ".png", {}, True),
    ("TIFF", ".tiff", {}, True),
    ("WEBP", ".webp", {"lossless": True}, True),
    ("JPEG", ".jpg", {"quality": 95}, False),
])
def test_round_trip(tmp_path, photo, fmt, suffix, opts, exact):
    p = tmp_path / f"in{suffix}"
    photo.save(p, fmt, **opts)
    got = load_input(p)
    assert got.format == fmt and got.rgb.mode == "RGB" and got.alpha is None
    assert got.size == got.rgb.size == photo.size
    assert got.path == p and got.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()
    if exact:
        assert psnr(got.rgb, photo) == math.inf
    else:
        assert psnr(got.rgb, photo) > 30
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_exif_orientation_applied(tmp_path, photo):
    p = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    photo.save(p, "JPEG", quality=95, exif=exif)
    got = load_input(p)
    assert got.size == (photo.height, photo.width)
    with Image.open(p) as raw:  # the same decode, rotated by hand
        want = raw.convert("RGB").transpose(Image.Transpose.ROTATE_270)
    assert psnr(got.rgb, want) == math.inf


def alpha_mask(size):
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    disc = ((x - w / 2) ** 2 + (y - h / 2) ** 2) < (min(w, h) / 2.5) ** 2
    return Image.fromarray(np.where(disc, 255, (x * 255 // w) // 2).astype(np.uint8), "L")


@pytest.mark.parametrize("fmt,suffix,opts", [
    ("PNG", ".png", {}), ("WEBP", ".webp", {"lossless": True, "exact": True}),
    ("TIFF", ".tiff", {}),
])
def test_rgba_alpha_kept_apart_and_reattached(tmp_path, photo, fmt, suffix, opts):
    alpha = alpha_mask(photo.size)
    rgba = photo.copy()
    rgba.putalpha(alpha)
    p = tmp_path / f"cutout{suffix}"
    rgba.save(p, fmt, **opts)
    got = load_input(p)
    assert got.rgb.mode == "RGB" and got.alpha is not None and got.alpha.mode == "L"
    assert psnr(got.rgb, photo) == math.inf  # colour under transparent pixels survives too
    assert (arr(got.alpha) == arr(alpha)).all()
    big = got.rgb.resize((192, 160), Image.Resampling.LANCZOS)  # stands in for the upscale
    out = attach_alpha(big, got.alpha)
    assert out.mode == "RGBA" and out.size == (192, 160)
    want = alpha.resize((192, 160), Image.Resampling.LANCZOS)
    assert (arr(out.getchannel("A")) == arr(want)).all()
    assert psnr(out.convert("RGB"), big) == math.inf
    assert attach_alpha(big, None) is big


def test_another_shape_keeps_the_centre_of_the_alpha_the_score_and_says_so(tmp_path, photo):
    """`up --width 904 --height 400` of a 3:2 photo: the pipeline keeps its centre (scaled to
    cover), but the alpha was stretched onto it, the PSNR compared the crop stretched back
    (17.6 dB where the shape was kept scored 28-30), and nothing said a part was cut off."""
    from hires.images import attach_alpha16, input_notes
    from hires.pipeline import fit

    alpha = Image.linear_gradient("L").resize(photo.size)  # rows 0 to 255, top to bottom
    rgba = photo.copy()
    rgba.putalpha(alpha)
    rgba.save(tmp_path / "cut.png")
    got = load_input(tmp_path / "cut.png")
    size = (192, 96)  # 96x80 is 6:5; this is 2:1, its centre rows kept
    made = fit(got.rgb, *size)  # what the pipeline starts from (stands in for the upscale)
    out = attach_alpha(made, got.alpha)
    np.testing.assert_allclose(arr(out.getchannel("A")), arr(fit(alpha, *size)), atol=1)
    pixels = np.asarray(made).astype(np.uint16) * 257
    sixteen = attach_alpha16(pixels, got.alpha)[..., 3]
    assert np.abs(np.rint(sixteen / 257) - arr(out.getchannel("A"))).max() <= 1
    assert fidelity(made, got) > 30  # the centre it shows, against that centre (was 15)
    (note,) = input_notes(got, 8, size)
    assert note == ("cut.png is 96x80, another shape than the 192x96 result: its centre is "
                    "upscaled, 96x48 px of it (a size of 192 keeps all of it: 192x160)")
    assert input_notes(got, 8, (192, 160)) == []  # its shape: nothing cut


@pytest.mark.parametrize(("size", "result", "said"), [
    ((40, 30), (80, 64), None),  # --scale 2: the 8 px steps cut 2 px, as any upscale's may
    ((1001, 751), (4000, 3008), None),  # --scale 4: 2 px
    ((1000, 667), (2000, 1336), None),
    # the steps force a shape far from its own: said, with no size that would not help
    ((1000, 10), (2000, 24), "x.png is 1000x10, another shape than the 2000x24 result: its "
                             "centre is upscaled, 833x10 px of it"),
    # a size of 4096 would cut it too (4096x72: 967x17 of it), so none is offered
    ((1000, 17), (4096, 4096), "x.png is 1000x17, another shape than the 4096x4096 result: "
                               "its centre is upscaled, 17x17 px of it"),
])
def test_only_a_crop_beyond_the_8_px_steps_is_said(size, result, said):
    """The note was said for 56 % of photos upscaled with --scale 2 (a 1 px crop)."""
    from hires.images import crop_note

    assert crop_note("x.png", size, *result) == said


def test_opaque_alpha_dropped(tmp_path, photo):
    p = tmp_path / "opaque.png"
    photo.convert("RGBA").save(p)
    got = load_input(p)
    assert got.alpha is None and psnr(got.rgb, photo) == math.inf


def test_palette_and_grey_alpha(tmp_path, photo):
    pal = photo.quantize(16)
    pal.info["transparency"] = 0
    p = tmp_path / "pal.png"
    pal.save(p, transparency=0)
    got = load_input(p)
    idx = np.asarray(pal)
    assert got.alpha is not None and (np.asarray(got.alpha) == np.where(idx == 0, 0, 255)).all()
    assert psnr(got.rgb, pal.convert("RGB")) == math.inf

    la = photo.convert("L")
    la.putalpha(alpha_mask(photo.size))
    p = tmp_path / "la.png"
    la.save(p)
    got = load_input(p)
    assert (arr(got.alpha) == arr(alpha_mask(photo.size))).all()
    rgb = arr(got.rgb)
    assert (rgb[..., 0] == arr(photo.convert("L"))).all() and (rgb[..., 1] == rgb[..., 2]).all()


def test_greyscale_and_one_bit(tmp_path, photo):
    grey = photo.convert("L")
    p = tmp_path / "grey.png"
    grey.save(p)
    got = load_input(p)
    rgb = arr(got.rgb)
    assert got.rgb.mode == "RGB" and got.alpha is None
    for c in range(3):
        assert (rgb[..., c] == arr(grey)).all()

    bw = grey.convert("1")
    p = tmp_path / "bw.tiff"
    bw.save(p)
    got = load_input(p)
    assert set(np.unique(arr(got.rgb))) <= {0, 255}
    assert (arr(got.rgb)[..., 0] == np.asarray(bw).astype(np.int32) * 255).all()


def sixteen_bit_grey(photo):
    """Ramp values 0, 32768, 65535 in the first row, the photo (x257) below."""
    g = arr(photo.convert("L")).astype(np.uint16) * 257
    g[0, :3] = [0, 32768, 65535]
    return g


@pytest.mark.parametrize("fmt,suffix", [("PNG", ".png"), ("TIFF", ".tiff")])
def test_sixteen_bit_grey_scaled_not_clipped(tmp_path, photo, fmt, suffix):
    g = sixteen_bit_grey(photo)
    p = tmp_path / f"deep{suffix}"
    Image.fromarray(g).save(p, fmt)
    with Image.open(p) as raw:
        assert raw.mode.startswith("I")  # really 16-bit on disk
    got = load_input(p)
    rgb = arr(got.rgb)
    assert list(rgb[0, :3, 0]) == [0, 128, 255]
    # x257 then rescaled gives the 8-bit photo back exactly (clipping would give all white)
    assert (rgb[1:, :, 0] == arr(photo.convert("L"))[1:]).all()
    assert (rgb[..., 0] == rgb[..., 2]).all()


def test_sixteen_bit_big_endian_tiff(tmp_path, photo):
    g = sixteen_bit_grey(photo)
    p = tmp_path / "be.tiff"
    Image.frombytes("I;16B", (g.shape[1], g.shape[0]), g.astype(">u2").tobytes()).save(p)
    got = load_input(p)
    assert list(arr(got.rgb)[0, :3, 1]) == [0, 128, 255]


def test_sixteen_bit_mode_i(tmp_path, photo):
    """Mode "I" (32-bit ints holding 16-bit data, as older Pillows open 16-bit PNGs; a 32-bit
    TIFF is refused by its BitsPerSample before)."""
    from hires.images import _split

    g = sixteen_bit_grey(photo).astype(np.int32)
    rgb, alpha = _split(Image.fromarray(g, "I"))
    assert list(arr(rgb)[0, :3, 0]) == [0, 128, 255] and alpha is None


def test_48_bit_rgb_tiff(tmp_path, photo):
    import tifffile  # comes with scikit-image
    rgb16 = arr(photo).astype(np.uint16) * 257
    p = tmp_path / "rgb48.tiff"
    tifffile.imwrite(p, rgb16, photometric="rgb")
    got = load_input(p)
    assert got.format == "TIFF" and got.rgb.mode == "RGB"
    assert np.abs(arr(got.rgb) - arr(photo)).max() <= 1


@pytest.mark.parametrize("fmt,suffix,floor", [("JPEG", ".jpg", 30), ("TIFF", ".tiff", 45)])
def test_cmyk_converted(tmp_path, photo, fmt, suffix, floor):
    p = tmp_path / f"cmyk{suffix}"
    photo.convert("CMYK").save(p, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    with Image.open(p) as raw:
        assert raw.mode == "CMYK"
    got = load_input(p)
    assert got.rgb.mode == "RGB" and psnr(got.rgb, photo) > floor


def test_truncated_png_and_jpeg(tmp_path, photo):
    for fmt, suffix in (("PNG", ".png"), ("JPEG", ".jpg")):
        whole = tmp_path / f"whole{suffix}"
        photo.save(whole, fmt)
        cut = tmp_path / f"cut{suffix}"
        cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
        one_line_error(cut, "truncated image, cut short (")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_fails_even_if_pillow_was_told_to_accept_it(tmp_path, photo, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as some library might
    whole = tmp_path / "whole.png"
    photo.save(whole)
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole.read_bytes()[:1500])
    one_line_error(cut, "truncated image, cut short (")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored


def test_tiff_orientation_first_page_and_mpo(tmp_path, photo):
    p = tmp_path / "oriented.tiff"
    photo.save(p, tiffinfo={274: 6})
    got = load_input(p)
    assert psnr(got.rgb, photo.transpose(Image.Transpose.ROTATE_270)) == math.inf
    # and its size from the header is the loaded one's: a batch sized the job by it, turned
    # twice (Pillow turns a TIFF as it opens it), and cropped the picture (found by QA)
    from hires.images import input_size

    for suffix in (".tiff", ".jpg"):
        exif = Image.Exif()
        exif[0x0112] = 6
        photo.save(tmp_path / f"o6{suffix}", exif=exif)
        assert input_size(tmp_path / f"o6{suffix}") == load_input(tmp_path / f"o6{suffix}").rgb.size
    assert input_size(p) == got.rgb.size == photo.size[::-1]
    # `hires info` says the size as shown and upscaled, in every format (a JPEG's was its
    # stored one, a TIFF's the turned one: found by QA)
    from hires.output import read_metadata

    exif = Image.Exif()
    exif[0x0112] = 8
    for suffix in (".tiff", ".jpg", ".png", ".webp"):
        photo.save(tmp_path / f"o8{suffix}", exif=exif)
        assert read_metadata(tmp_path / f"o8{suffix}")["size"] == photo.size[::-1], suffix
    # a PNG's eXIf chunk after its pixels, which `up` reads (info did not: found by QA)
    photo.save(tmp_path / "plain.png")
    data, body = (tmp_path / "plain.png").read_bytes(), exif.tobytes()
    chunk = struct.pack(">I", len(body)) + b"eXIf" + body + \
        struct.pack(">I", zlib.crc32(b"eXIf" + body))
    late = tmp_path / "late.png"
    late.write_bytes(data[:-12] + chunk + data[-12:])  # before IEND
    assert read_metadata(late)["size"] == input_size(late) == photo.size[::-1]

    p = tmp_path / "pages.tiff"
    photo.save(p, save_all=True, append_images=[photo.rotate(90)])
    assert psnr(load_input(p).rgb, photo) == math.inf

    p = tmp_path / "camera.jpg"  # a JPEG with a second picture, as cameras write: Pillow's MPO
    photo.save(p, "MPO", save_all=True, append_images=[photo.rotate(90)], quality=95)
    with Image.open(p) as raw:
        assert raw.format == "MPO"
    got = load_input(p)
    assert got.format == "JPEG" and psnr(got.rgb, photo) > 30


def test_corrupt_png_data(tmp_path, photo):
    p = tmp_path / "flipped.png"
    photo.save(p)
    b = bytearray(p.read_bytes())
    for i in range(100, 400):
        b[i] ^= 0x5A
    p.write_bytes(bytes(b))
    one_line_error(p, "corrupt")


def test_not_images(tmp_path, photo):
    before = set(tmp_path.iterdir())
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture\nat all\n")
    gif = tmp_path / "anim.gif"
    photo.save(gif, "GIF")
    bmp = tmp_path / "old.bmp"
    photo.save(bmp, "BMP")
    made = {empty, text, gif, bmp}
    one_line_error(empty, "empty file")
    one_line_error(text, "not an image")
    assert "PNG, JPEG, WebP or TIFF" in one_line_error(gif, "GIF")
    assert "PNG, JPEG, WebP or TIFF" in one_line_error(bmp, "BMP")
    one_line_error(tmp_path / "missing.png", "no such file")
    one_line_error(tmp_path, "folder")
    assert set(tmp_path.iterdir()) == before | made  # nothing written


def float_rgb_tiff(width, height):
    """A valid little-endian TIFF of 32-bit float RGB samples, which Pillow cannot open."""
    pixels = np.linspace(0, 1, width * height * 3, dtype="<f4").tobytes()
    # (tag, type, value): type 3 SHORT, 4 LONG; offsets of the arrays after the directory
    directory = 8 + 2 + 12 * 11 + 4
    tags = [(256, 3, width), (257, 3, height), (258, 3, directory), (259, 3, 1), (262, 3, 2),
            (273, 4, directory + 12), (277, 3, 3), (278, 3, height), (279, 4, len(pixels)),
            (284, 3, 1), (339, 3, directory + 6)]
    out = b"II*\0" + struct.pack("<IH", 8, len(tags))
    for tag, kind, value in tags:
        count = 3 if tag in (258, 339) else 1
        packed = struct.pack("<HH", value, 0) if kind == 3 and count == 1 else \
            struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, count) + packed
    return out + struct.pack("<I", 0) + struct.pack("<6H", 32, 32, 32, 3, 3, 3) + pixels


def test_a_tiff_pillow_cannot_read_says_what_to_save_it_as(tmp_path):
    p = tmp_path / "hdr.tif"
    p.write_bytes(float_rgb_tiff(8, 8))
    msg = one_line_error(p, "TIFF of 32-bit floating-point samples, which Pillow cannot read")
    assert "8- or 16-bit" in msg and "not an image file" not in msg


def test_a_tiff_pillow_cannot_read_is_refused_for_what_it_holds(tmp_path):
    """A 16-bit grey TIFF with alpha was said to be 32-bit or over 4 channels, and told to be
    saved as the 16-bit TIFF it was (found by QA); `hires info` said only 'cannot identify'."""
    import tifffile

    from hires.output import OutputError, read_metadata

    grey = np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20
    tifffile.imwrite(tmp_path / "ga16.tif", np.dstack([grey, grey[::-1]]), photometric="minisblack",
                     extrasamples=["unassalpha"])
    msg = one_line_error(tmp_path / "ga16.tif", "a 16-bit grey TIFF with alpha")
    assert "save it as a 16-bit PNG" in msg and "32-bit" not in msg
    tifffile.imwrite(tmp_path / "f32.tif", np.zeros((8, 8, 3), np.float32), photometric="rgb")
    # a BigTIFF's (its 16-byte header: "not an image file"), signed samples and a 16-bit
    # palette (told to be saved as what they were), a directory with nothing in it ("1 1-bit
    # channels"): found by QA
    tifffile.imwrite(tmp_path / "big.tif", np.zeros((8, 8, 3), np.float32), photometric="rgb",
                     bigtiff=True)
    tifffile.imwrite(tmp_path / "signed.tif", np.zeros((8, 8, 3), np.int16), photometric="rgb")
    tifffile.imwrite(tmp_path / "palette.tif", np.zeros((8, 8), np.uint16),
                     photometric="palette", colormap=np.zeros((3, 65536), np.uint16))
    (tmp_path / "empty.tif").write_bytes(b"II*\0\x08\0\0\0" + bytes(6))
    # a BigTIFF whose directory is garbage: info passed Pillow's "Unable to seek to frame" on
    (tmp_path / "junk.tif").write_bytes(b"II+\0\x08\0\0\0" + b"\xff" * 64)
    with pytest.raises(OutputError, match="first directory is damaged or empty"):
        read_metadata(tmp_path / "junk.tif")
    for name, said in (("ga16.tif", "16-bit grey TIFF with alpha"),
                       ("f32.tif", "32-bit floating-point samples"),
                       ("big.tif", "32-bit floating-point samples"),
                       ("signed.tif", "signed 16-bit samples"),
                       ("palette.tif", "a 16-bit palette TIFF"),
                       ("empty.tif", "first directory is damaged or empty")):
        assert said in one_line_error(tmp_path / name), name
        with pytest.raises(OutputError, match=said):
            read_metadata(tmp_path / name)


def png_header(width, height):
    """A PNG with a valid IHDR claiming width x height, and no pixel data."""
    def chunk(kind, payload):
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_huge_declared_size_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89478485)  # Pillow's default
    p = tmp_path / "huge.png"
    p.write_bytes(png_header(40000, 40000))
    msg = one_line_error(p, "too large")
    assert "40000x40000" in msg and str(MAX_SIDE) in msg
    # past Pillow's own guard (twice hires' pixels): said in hires' words and bounds alone,
    # not Pillow's with its other limit beside them (QA 183)
    p.write_bytes(png_header(100000, 100000))
    msg = one_line_error(p, "too large")
    assert msg.endswith(f"huge.png: 100000x100000 px is too large (at most {MAX_SIDE} px a side "
                        f"and {MAX_PIXELS:,} pixels); downscale it first"), msg
    p.write_bytes(png_header(MAX_SIDE + 1, 16))
    one_line_error(p, "too large")
    assert Image.MAX_IMAGE_PIXELS == 89478485  # restored


def test_large_but_sane_passes_pillows_bomb_guard(tmp_path, monkeypatch):
    """15000x15000 (225 MP) is past Pillow's default bomb error (179 MP) but within our bound:
    the loader gets as far as decoding, which fails here only because there is no pixel data."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89478485)
    p = tmp_path / "big.png"
    p.write_bytes(png_header(15000, 15000))
    with pytest.raises(Image.DecompressionBombError):
        Image.open(p)
    one_line_error(p, "truncated or corrupt")
    assert Image.MAX_IMAGE_PIXELS == 89478485


def test_hires_leaves_pillows_guard_on_for_its_caller(tmp_path, monkeypatch):
    """Importing hires.output set Image.MAX_IMAGE_PIXELS = None for the whole process: a
    library caller's own reads lost their bomb guard (QA 208). hires lifts it around its own
    header reads instead: `info` of a 225 MP image's file still reads it."""
    import subprocess
    import sys

    from helpers_cli import cli, subprocess_env

    code = ("import hires, hires.output, hires.cli, hires.batch; from PIL import Image; "
            "print(Image.MAX_IMAGE_PIXELS)")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=subprocess_env(), timeout=120)
    assert shown.stdout.strip() == "89478485", shown.stderr
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89478485)
    p = tmp_path / "big.png"
    p.write_bytes(png_header(15000, 15000))
    result = cli("info", str(p))
    assert "15000x15000" in result.stdout and "decompression" not in result.stderr.lower(), \
        result.stdout + result.stderr
    assert Image.MAX_IMAGE_PIXELS == 89478485


def test_psnr(photo):
    assert psnr(photo, photo.copy()) == math.inf
    rng = np.random.default_rng(0)
    scores = []
    for sigma in (1, 4, 16):
        noisy = np.clip(arr(photo) + rng.normal(0, sigma, arr(photo).shape), 0, 255)
        scores.append(psnr(photo, Image.fromarray(noisy.astype(np.uint8))))
    assert scores[0] > scores[1] > scores[2] > 15
    assert 45 < scores[0] < 52  # sigma 1 -> ~48 dB
    with pytest.raises(ValueError):
        psnr(photo, photo.resize((10, 10)))


def test_fidelity(tmp_path, smooth):
    p = tmp_path / "coffee.png"
    smooth.save(p)
    src = load_input(p)
    up = smooth.resize((300, 200), Image.Resampling.LANCZOS)
    good = fidelity(up, src)
    assert good > 30
    assert fidelity(up.convert("RGBA"), src) == good
    shifted = Image.fromarray(np.roll(np.asarray(up), 8, axis=1))
    assert fidelity(shifted, src) < good - 5
    assert fidelity(smooth, src) == math.inf


def _swapped_profile() -> bytes:
    """sRGB with its red and blue primaries swapped: a profile under which stored red is blue."""
    from PIL import ImageCms

    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    entries = {bytes(icc[o:o + 4]): o for o in range(132, 132 + 12 * struct.unpack(
        ">I", icc[128:132])[0], 12)}
    r, b = entries[b"rXYZ"] + 4, entries[b"bXYZ"] + 4
    icc[r:r + 8], icc[b:b + 8] = bytes(icc[b:b + 8]), bytes(icc[r:r + 8])
    return bytes(icc)


def test_an_input_with_a_colour_profile_is_read_in_srgb(tmp_path, asked):
    """A phone's Display P3 or an Adobe RGB photo: its values mean other colours than sRGB's,
    which the model knows; they are converted, not read as if they were sRGB."""
    from hires.images import load_input

    red = Image.new("RGB", (64, 48), (255, 0, 0))
    tagged, plain = tmp_path / "tagged.png", tmp_path / "plain.png"
    red.save(tagged, icc_profile=_swapped_profile())
    red.save(plain)
    assert load_input(tagged).rgb.getpixel((0, 0)) == (0, 0, 255)
    assert load_input(tagged).converted_from == "sRGB built-in"  # lcms' name, kept in the swap
    assert load_input(plain).rgb.getpixel((0, 0)) == (255, 0, 0)
    assert load_input(plain).converted_from is None
    # `hires up` says so (a dry run loads no input's pixels, so a real run: the tiny model).
    from helpers_cli import cli

    result = cli("up", tagged, "--scale", "2", "--model", "tiny", "--steps", "1", "-o",
                 tmp_path / "out.png")
    assert result.exit_code == 0, result.stderr
    assert "tagged.png: colour profile 'sRGB built-in' converted to sRGB" in result.stderr


def test_a_32_bit_integer_tiff_is_refused_not_clipped_to_white(tmp_path):
    """Pillow opens it as mode I, which hires read as 16-bit: every value above 65535 became
    white (the photo's mean 129 came out 243) and it said 'has 16 bits a channel'."""
    photo = np.asarray(Image.fromarray(data.camera()).resize((64, 64))).astype(np.int32)
    Image.fromarray(photo * 65793, "I").save(tmp_path / "i32.tif")
    with pytest.raises(ImageInputError, match="its samples are 32-bit integers; save it as an "
                                              "8- or 16-bit TIFF or PNG"):
        load_input(tmp_path / "i32.tif")
    # Nor one whose values fit 8 bits (PIL's convert("I")): read as 16-bit, it came out near
    # black (mean 2.7 for a photo's 115), said to have '16 bits a channel'.
    Image.fromarray(photo, "I").save(tmp_path / "low.tif")
    with pytest.raises(ImageInputError, match="its samples are 32-bit integers"):
        load_input(tmp_path / "low.tif")
    # A signed 16-bit one below 0 is said to be that (it was called 32-bit)
    import tifffile

    tifffile.imwrite(tmp_path / "signed.tif", (photo - 128).astype(np.int16))
    with pytest.raises(ImageInputError, match="its samples are signed, some below 0; save it "
                                              "as an unsigned 8- or 16-bit"):
        load_input(tmp_path / "signed.tif")
    Image.fromarray((photo * 257).astype(np.uint16)).save(tmp_path / "i16.tif")  # I;16: fine
    got = load_input(tmp_path / "i16.tif")
    assert got.bits == 16 and abs(np.asarray(got.rgb)[..., 0].mean() - photo.mean()) < 1


@pytest.mark.parametrize("brand, kind", [(b"heic", "HEIC"), (b"mif1", "HEIC"), (b"avif", "AVIF")])
def test_a_phones_heic_photo_is_named_not_called_no_image(tmp_path, brand, kind):
    """An iPhone's HEIC was 'not an image file', as if it were anything but a photo."""
    path = tmp_path / "IMG_0001.HEIC"
    path.write_bytes(b"\0\0\0\x18ftyp" + brand + b"\0\0\0\0mif1heic" + bytes(64))
    with pytest.raises(ImageInputError, match=f"{kind} images are not accepted; convert it"):
        load_input(path)


def test_a_file_rewritten_in_place_with_its_old_mtime_is_hashed_again(tmp_path):
    """`cp -p` over a file keeps its inode, size and mtime: the remembered hash was given."""
    import os

    from hires.images import file_sha256, sha256_once

    path = tmp_path / "style.safetensors"
    path.write_bytes(b"a" * 64)
    first = sha256_once(path)
    stat = path.stat()
    with open(path, "r+b") as f:  # same inode, same size
        f.write(b"b" * 64)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_mtime_ns == stat.st_mtime_ns and path.stat().st_ino == stat.st_ino
    assert sha256_once(path) == file_sha256(path) != first
