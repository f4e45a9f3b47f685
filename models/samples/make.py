#!/usr/bin/env python3
"""Writes the sample images in models/samples/ (deterministic; numpy + Pillow).

    python models/samples/make.py                      # the shape samples
    python models/samples/make.py --photo coffee.png   # also photo_640x480.jpg from
                                                       # scikit-image's skimage/data/coffee.png

Run it with the fixtures venv (tests/fixtures/make.sh creates .venv-fixtures/ with
the pinned Pillow). See models/samples/README.md for what each file is.
"""
import hashlib
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import shapes_synth  # noqa: E402  (models/shapes_synth.py, the training pictures' generator)

SEED = 20240650
# (file, label, background, width, height, supersampling, format)
SHAPE_SAMPLES = [
    ("circle.jpg", "circle", "gradient", 640, 480, 2, "JPEG"),
    ("square.jpg", "square", "texture", 640, 480, 2, "JPEG"),
    ("triangle.jpg", "triangle", "flat", 640, 480, 2, "JPEG"),
    ("none.jpg", "none", "texture", 640, 480, 2, "JPEG"),
    ("square_96.png", "square", "gradient", 96, 96, 4, "PNG"),
]
JPEG_QUALITY = 85

# scikit-image 0.26.0's skimage/data/coffee.png (600x400 RGB, CC0, Rachel Michetti).
PHOTO_SOURCE_SHA256 = "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7"
PHOTO_SIZE = (640, 480)
PHOTO_QUALITY = 90


def make_photo(source: Path) -> None:
    """Center crop to 4:3 (533.3x400 of 600x400), resize to 640x480 (Lanczos), JPEG q90."""
    data = source.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != PHOTO_SOURCE_SHA256:
        raise SystemExit(f"{source}: sha256 {digest}, expected scikit-image 0.26.0's coffee.png "
                         f"({PHOTO_SOURCE_SHA256})")
    im = Image.open(source).convert("RGB")
    w, h = im.size
    crop_w = h * PHOTO_SIZE[0] / PHOTO_SIZE[1]
    x0 = (w - crop_w) / 2
    out = im.resize(PHOTO_SIZE, Image.LANCZOS, box=(x0, 0.0, x0 + crop_w, float(h)))
    path = HERE / "photo_640x480.jpg"
    out.save(path, "JPEG", quality=PHOTO_QUALITY)
    print(f"wrote {path.name} ({path.stat().st_size} bytes)")


def make_shapes() -> None:
    """One scene per file from shapes_synth.render, each from its own seed
    (default_rng(SEED + position in SHAPE_SAMPLES)), at the file's own size."""
    for i, (name, label, background, w, h, ss, fmt) in enumerate(SHAPE_SAMPLES):
        img = shapes_synth.render(label, np.random.default_rng(SEED + i), w, h, ss=ss, background=background)
        path = HERE / name
        if fmt == "JPEG":
            img.save(path, fmt, quality=JPEG_QUALITY)
        else:
            img.save(path, fmt)
        print(f"wrote {name} ({w}x{h} {fmt}, {path.stat().st_size} bytes)")


def main(argv: list) -> None:
    if argv[:1] == ["--photo"]:
        if len(argv) < 2:
            raise SystemExit("--photo needs the path of skimage/data/coffee.png")
        make_photo(Path(argv[1]))
        argv = argv[2:]
    if argv:
        raise SystemExit(f"unexpected arguments {argv}")
    make_shapes()


if __name__ == "__main__":
    main(sys.argv[1:])
