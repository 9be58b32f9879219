"""A corpus of hostile images, generated: every format Pillow writes, then truncated, bit-flipped and mutated;
decompression bombs; 16-bit PNG and TIFF; multi-frame GIF and TIFF; huge metadata; broken EXIF."""

import io
import random
import struct
import zlib

import numpy as np
from PIL import Image, PngImagePlugin, TiffImagePlugin

from .images import face

# Formats that need more than a plain save (a palette, a size, a plugin with no real encoder) are skipped.
SKIPPED_FORMATS = {"BUFR", "GRIB", "HDF5", "WMF", "PALM", "PDF", "MPO", "EPS", "XBM"}


def writable_formats() -> list[str]:
    Image.init()
    return sorted(set(Image.SAVE) - SKIPPED_FORMATS)


def encode_any(image: Image.Image, fmt: str) -> bytes | None:
    """The image in `fmt`, in the first mode that format accepts; None when none does."""
    for mode in ("RGB", "L", "RGBA", "P", "1"):
        buffer = io.BytesIO()
        try:
            picture = image.convert(mode)
            if fmt in ("ICO", "ICNS", "CUR"):
                picture = picture.resize((32, 32))
            picture.save(buffer, format=fmt)
        except Exception:  # noqa: BLE001 - a format refusing a mode: try the next
            continue
        return buffer.getvalue()
    return None


def base_images() -> dict[str, bytes]:
    picture = Image.fromarray(face("happy", 0)[0]).resize((64, 64))
    encoded = {f"valid.{fmt.lower()}": encode_any(picture, fmt) for fmt in writable_formats()}
    return {name: data for name, data in encoded.items() if data}


def mutations(name: str, data: bytes, rng: random.Random) -> dict[str, bytes]:
    """Truncated at several points, bit-flipped, a block overwritten, the header duplicated."""
    out = {f"{name}.cut{n}": data[: max(1, len(data) * n // 8)] for n in (1, 3, 5, 7)}
    for i in range(3):
        flipped = bytearray(data)
        for _ in range(1 + len(data) // 200):
            position = rng.randrange(len(flipped))
            flipped[position] ^= 1 << rng.randrange(8)
        out[f"{name}.flip{i}"] = bytes(flipped)
    block = bytearray(data)
    start = rng.randrange(min(len(block), 64))  # the header region: sizes, offsets, counts
    block[start:start + 8] = rng.choice([b"\xff" * 8, b"\x00" * 8, b"\x7f\xff\xff\xff" * 2])
    out[f"{name}.header"] = bytes(block)
    out[f"{name}.double"] = data[:32] + data
    return out


def bombs() -> dict[str, bytes]:
    """Small files that decompress to, or declare, huge images."""
    out = {}
    for name, mode, side in (("bomb-1bit.png", "1", 6000), ("bomb-zeros.png", "L", 5000)):  # 36 and 25 Mpx
        buffer = io.BytesIO()
        Image.new(mode, (side, side)).save(buffer, format="PNG")
        out[name] = buffer.getvalue()
    small = io.BytesIO()
    Image.new("L", (64, 64)).save(small, format="PNG")
    png = bytearray(small.getvalue())
    png[16:24] = struct.pack(">II", 100_000, 100_000)  # IHDR: 10^10 pixels, with a valid CRC
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    out["bomb-header.png"] = bytes(png)
    small = io.BytesIO()
    Image.new("L", (64, 64)).save(small, format="GIF")
    gif = bytearray(small.getvalue())
    gif[6:10] = struct.pack("<HH", 65535, 65535)  # logical screen 65535 x 65535
    out["bomb-header.gif"] = bytes(gif)
    return out


def sixteen_bit(expression: str = "happy") -> dict[str, tuple[bytes, bytes]]:
    """(16-bit file, the same face at 8 bits) as PNG and TIFF, little and big endian."""
    grey = face(expression, 0)[0]
    eight = io.BytesIO()
    Image.fromarray(grey).save(eight, format="PNG")
    out = {}
    for fmt in ("PNG", "TIFF"):
        buffer = io.BytesIO()
        Image.fromarray(grey.astype(np.uint16) * 257).save(buffer, format=fmt)
        out[f"16bit.{fmt.lower()}"] = (buffer.getvalue(), eight.getvalue())
    big_endian = io.BytesIO()
    Image.frombytes("I;16B", grey.shape[::-1], (grey.astype(">u2") * 257).tobytes()).save(big_endian, format="TIFF")
    out["16bit-be.tiff"] = (big_endian.getvalue(), eight.getvalue())
    floats = io.BytesIO()
    Image.fromarray(grey.astype(np.float32) / 255).save(floats, format="TIFF")
    out["float.tiff"] = (floats.getvalue(), eight.getvalue())
    return out


def multi_frame() -> dict[str, bytes]:
    frames = [Image.fromarray(face(expression, 0)[0]) for expression in ("happy", "sad", "surprise")]
    out = {}
    for fmt in ("GIF", "TIFF", "WEBP", "PNG"):
        buffer = io.BytesIO()
        frames[0].convert("RGB").save(buffer, format=fmt, save_all=True,
                                      append_images=[f.convert("RGB") for f in frames[1:]])
        out[f"frames.{fmt.lower()}"] = buffer.getvalue()
    return out


def metadata() -> dict[str, bytes]:
    """Huge text chunks, huge and malformed EXIF, orientation values out of range."""
    picture = Image.fromarray(face("happy", 0)[0]).convert("RGB")
    out = {}
    info = PngImagePlugin.PngInfo()
    for i in range(10):
        info.add_text(f"k{i}", "x" * 200_000)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", pnginfo=info)
    out["huge-text.png"] = buffer.getvalue()
    info = PngImagePlugin.PngInfo()
    info.add_text("z", "y" * 5_000_000, zip=True)  # decompresses past Pillow's text chunk limit
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", pnginfo=info)
    out["zip-text.png"] = buffer.getvalue()
    for orientation in (0, 3, 6, 9, 255, 65535):
        exif = Image.Exif()
        exif[0x0112] = orientation
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", exif=exif)
        out[f"orientation{orientation}.jpg"] = buffer.getvalue()
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010E] = "d" * 60_000  # ImageDescription: most of a JPEG APP1 segment
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", exif=exif)
    out["huge-exif.jpg"] = buffer.getvalue()
    good = out["orientation6.jpg"]
    app1 = good.index(b"Exif\x00\x00")
    for i, junk in enumerate((b"\xff" * 24, b"\x00" * 24, b"MM\x00\x2a\x7f\xff\xff\xff" * 3)):
        broken = bytearray(good)
        broken[app1 + 6:app1 + 6 + len(junk)] = junk  # the TIFF header and first IFD of the EXIF block
        out[f"broken-exif{i}.jpg"] = bytes(broken)
    tiff_info = TiffImagePlugin.ImageFileDirectory_v2()
    tiff_info[0x0112] = 7
    tiff_info[0x010E] = "t" * 1_000_000
    buffer = io.BytesIO()
    picture.save(buffer, format="TIFF", tiffinfo=tiff_info)
    out["huge-tag.tiff"] = buffer.getvalue()
    return out


def corpus(seed: int = 0) -> dict[str, bytes]:
    rng = random.Random(seed)
    valid = base_images()
    out = dict(valid)
    for name, data in valid.items():
        out.update(mutations(name, data, rng))
    out.update(bombs())
    out.update({name: pair[0] for name, pair in sixteen_bit().items()})
    out.update(multi_frame())
    out.update(metadata())
    out.update({"empty": b"", "text.txt": b"hello, not an image", "zeros": bytes(4096),
                "random": bytes(rng.randrange(256) for _ in range(4096))})
    return out
