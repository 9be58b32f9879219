"""`python -m bench.decode [--repeat N]`: what decoding one upload costs, per format and size.

Two paths of the service (service/runtime/images.py): `decode_image` (`faces=none`: straight to the model's 48x48
input, JPEGs decoded at reduced scale with Pillow's `draft`) and `decode_photo` (`faces=auto|detect`: an
upright RGB copy of at most FER_PHOTO_MAX_PIXELS for the detector). Against the plain decode users write first
(full decode, convert, resize), which is what bench/baseline.py does. The images are scikit-image's astronaut
photo, scaled to each size and saved in each format. Prints ms per image (median of N).
"""

import argparse
import io
import statistics
import time

from PIL import Image

from service.runtime.images import decode_image, decode_photo
from service.settings import Settings

SIZES = {"face 48x48": (48, 48), "photo 640x480": (640, 480), "photo 4000x3000": (4000, 3000)}
FORMATS = {"JPEG": {"quality": 90}, "PNG": {}, "WEBP": {"quality": 90}, "BMP": {}}


def encoded(size: tuple[int, int], fmt: str) -> bytes:
    from skimage.data import astronaut

    buffer = io.BytesIO()
    Image.fromarray(astronaut()).resize(size, Image.BILINEAR).save(buffer, fmt, **FORMATS[fmt])
    return buffer.getvalue()


def plain(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as image:
        image.convert("L").resize((48, 48), Image.BILINEAR)


def median_ms(decode, data: bytes, repeat: int) -> float:
    decode(data)  # warm-up
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        decode(data)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    settings = Settings()
    paths = {
        "plain (full decode, convert, resize)": plain,
        "decode_image (faces=none, draft)": lambda data: decode_image(data, "bench", (48, 48),
                                                                      settings.max_image_pixels),
        "decode_photo (faces=auto)": lambda data: decode_photo(data, "bench", settings.max_image_pixels,
                                                               settings.photo_max_pixels),
    }
    print(f"| image | format | bytes | {' | '.join(paths)} |")
    print("| --- | --- | ---: |" + " ---: |" * len(paths))
    for label, size in SIZES.items():
        for fmt in FORMATS:
            data = encoded(size, fmt)
            figures = [f"{median_ms(decode, data, args.repeat):.2f}" for decode in paths.values()]
            print(f"| {label} | {fmt} | {len(data):,} | {' | '.join(figures)} |")


if __name__ == "__main__":
    main()
