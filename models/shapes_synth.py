"""Synthetic pictures of one filled shape for the `shapes` demo model (numpy + Pillow).

The single source of truth for the pictures used to train models/shapes_int8.tflite
and for the sample images in models/samples/ (models/samples/make.py). The
specification (also in models/README.md, "Synthetic shapes generator"):

  labels      0 circle, 1 square, 2 triangle, 3 none   (= shapes.labels, = output order)
  scene       a W x H RGB picture: a background, then (except for none) one filled shape,
              then, in 30% of the scenes, 1-3 thin straight lines as distractors,
              then Gaussian pixel noise, std-dev U(0, 6) (before rounding to uint8)
  background  one of, with equal probability:
              flat      one random colour (each channel uniform 0..255)
              gradient  linear blend of two random colours along a random direction
              texture   a random base colour plus smooth colour noise (a 2x2..7x7 and a
                        8x8..20x20 grid of N(0, 35) / N(0, 15) offsets, bicubic upscaled)
  shape       size s = U(0.2, 0.7) * min(W, H): the diameter of the circle, the side of
              the square, the side of the equilateral triangle (each vertex moved by up
              to 8% of the side, so not every triangle is perfect); square and triangle
              rotated by U(0, 360) degrees; the centre uniform over the positions where
              the shape's circumscribed circle lies inside the picture
  colour      uniform random RGB, redrawn (up to 200 times, keeping the best) until it is
              at least 100 away (Euclidean, 0..255 units) from the mean background colour
              under the shape's bounding box
  drawing     the shape's mask is drawn at `ss` times the size and box-downsampled
              (antialiased edges)

A training example (gen_example) is such a scene on a camera-sized canvas, then JPEG
(as a camera would send it), then Pillow's bilinear resize to 96x96, stretching it:
  canvas      H uniform integer in [96, 240] (70%) or [240, 480] (30%); W = round(H * a),
              a log-uniform in [0.75, 1.3333] (so 4:3 landscape and portrait pictures
              stretched to a square look like the training data)
  JPEG        in 85% of the examples: quality uniform integer in [30, 95]
  resize      Image.resize((96, 96), Image.BILINEAR), the daemon's `resize = "stretch"`

This generator is for demonstrations and tests: real photographs look different.
"""
import io
import math

import numpy as np
from PIL import Image, ImageDraw

LABELS = ("circle", "square", "triangle", "none")
SIZE = 96
BACKGROUNDS = ("flat", "gradient", "texture")


def _background(kind: str, rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """float64 [h, w, 3] in 0..255."""
    if kind == "flat":
        c = rng.uniform(0.0, 255.0, 3)
        return np.broadcast_to(c, (h, w, 3)).copy()
    if kind == "gradient":
        c0 = rng.uniform(0.0, 255.0, 3)
        c1 = rng.uniform(0.0, 255.0, 3)
        ang = rng.uniform(0.0, 2.0 * math.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        t = (xx - w / 2) * math.cos(ang) + (yy - h / 2) * math.sin(ang)
        half = 0.5 * (abs(w * math.cos(ang)) + abs(h * math.sin(ang))) or 1.0
        t = np.clip(t / (2 * half) + 0.5, 0.0, 1.0)[..., None]
        return c0 * (1.0 - t) + c1 * t
    if kind == "texture":
        base = rng.uniform(30.0, 225.0, 3)
        out = np.broadcast_to(base, (h, w, 3)).copy()
        for lo, hi, sd in ((2, 7, 35.0), (8, 20, 15.0)):
            g = int(rng.integers(lo, hi + 1))
            grid = rng.normal(0.0, sd, (g, g, 3))
            # Offsets +-128 around 128 as uint8 for Pillow's bicubic upscale.
            img = Image.fromarray(np.clip(np.round(grid + 128.0), 0, 255).astype(np.uint8), "RGB")
            out += np.asarray(img.resize((w, h), Image.BICUBIC), dtype=np.float64) - 128.0
        return np.clip(out, 0.0, 255.0)
    raise ValueError(f"unknown background {kind!r}")


def _shape_points(label: str, rng: np.random.Generator, w: int, h: int):
    """Vertices (circle: bounding box) in canvas pixels, and the bounding box."""
    m = min(w, h)
    s = rng.uniform(0.2, 0.7) * m
    if label == "circle":
        r_out = s / 2
    elif label == "square":
        r_out = s / math.sqrt(2.0)
    else:
        r_out = s / math.sqrt(3.0) * 1.08  # room for the vertex jitter
    cx = rng.uniform(r_out, w - r_out)
    cy = rng.uniform(r_out, h - r_out)
    if label == "circle":
        pts = [(cx - s / 2, cy - s / 2), (cx + s / 2, cy + s / 2)]
    else:
        rot = rng.uniform(0.0, 2.0 * math.pi)
        n = 4 if label == "square" else 3
        r = s / math.sqrt(2.0) if n == 4 else s / math.sqrt(3.0)
        pts = []
        for k in range(n):
            a = rot + 2.0 * math.pi * k / n
            x, y = cx + r * math.cos(a), cy + r * math.sin(a)
            if n == 3:
                j = rng.uniform(-0.08, 0.08, 2) * s
                x, y = x + j[0], y + j[1]
            pts.append((x, y))
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    box = (max(0, int(min(xs))), max(0, int(min(ys))), min(w, int(math.ceil(max(xs))) + 1),
           min(h, int(math.ceil(max(ys))) + 1))
    return pts, box


def _mask(label: str, pts, w: int, h: int, ss: int) -> np.ndarray:
    """Coverage 0..1 [h, w, 1] of the shape, drawn at ss x and box-downsampled."""
    big = Image.new("L", (w * ss, h * ss), 0)
    d = ImageDraw.Draw(big)
    sp = [(x * ss, y * ss) for x, y in pts]
    if label == "circle":
        d.ellipse(sp, fill=255)
    else:
        d.polygon(sp, fill=255)
    if ss > 1:
        big = big.resize((w, h), Image.BOX)
    return (np.asarray(big, dtype=np.float64) / 255.0)[..., None]


def _contrasting_colour(rng: np.random.Generator, bg_mean: np.ndarray) -> np.ndarray:
    best, best_d = None, -1.0
    for _ in range(200):
        c = rng.uniform(0.0, 255.0, 3)
        d = float(np.linalg.norm(c - bg_mean))
        if d > best_d:
            best, best_d = c, d
        if d >= 100.0:
            break
    return best


def render(label: str, rng: np.random.Generator, w: int, h: int, *, ss: int = 4,
           background: str = None) -> Image.Image:
    """One scene as an RGB Pillow image of w x h. `background` forces a background kind
    (the draws are the same either way, so a forced kind changes only that choice)."""
    if label not in LABELS:
        raise ValueError(f"unknown label {label!r}")
    kind = BACKGROUNDS[int(rng.integers(0, len(BACKGROUNDS)))]
    if background is not None:
        kind = background
    img = _background(kind, rng, w, h)
    if label != "none":
        pts, (x0, y0, x1, y1) = _shape_points(label, rng, w, h)
        colour = _contrasting_colour(rng, img[y0:y1, x0:x1].reshape(-1, 3).mean(axis=0))
        a = _mask(label, pts, w, h, ss)
        img = img * (1.0 - a) + colour * a
    if rng.uniform() < 0.3:
        lines = Image.new("L", (w * ss, h * ss), 0)
        d = ImageDraw.Draw(lines)
        n = int(rng.integers(1, 4))
        colour = rng.uniform(0.0, 255.0, 3)
        m = min(w, h)
        for _ in range(n):
            p = rng.uniform(0.0, 1.0, 4) * [w, h, w, h] * ss
            width = max(1, int(round(rng.uniform(0.005, 0.015) * m * ss)))
            d.line([(p[0], p[1]), (p[2], p[3])], fill=255, width=width)
        if ss > 1:
            lines = lines.resize((w, h), Image.BOX)
        a = (np.asarray(lines, dtype=np.float64) / 255.0)[..., None]
        img = img * (1.0 - a) + colour * a
    sd = rng.uniform(0.0, 6.0)
    img = img + rng.normal(0.0, 1.0, img.shape) * sd
    return Image.fromarray(np.clip(np.round(img), 0, 255).astype(np.uint8), "RGB")


def jpeg_roundtrip(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(quality))
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out.convert("RGB")


def gen_example(label: str, rng: np.random.Generator) -> np.ndarray:
    """One training picture: uint8 [96, 96, 3] (see the module docstring)."""
    if rng.uniform() < 0.7:
        h = int(rng.integers(96, 241))
    else:
        h = int(rng.integers(240, 481))
    aspect = math.exp(rng.uniform(math.log(0.75), math.log(4.0 / 3.0)))
    w = int(round(h * aspect))
    ss = 4 if h < 160 else 2
    img = render(label, rng, w, h, ss=ss)
    if rng.uniform() < 0.85:
        img = jpeg_roundtrip(img, int(rng.integers(30, 96)))
    return np.asarray(img.resize((SIZE, SIZE), Image.BILINEAR), dtype=np.uint8)


def gen_dataset(n_per_class: int, seed: int):
    """n_per_class pictures of each label (label order per round), then shuffled:
    (uint8 [N, 96, 96, 3], int32 [N])."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for _ in range(n_per_class):
        for i, lab in enumerate(LABELS):
            xs.append(gen_example(lab, rng))
            ys.append(i)
    x = np.stack(xs)
    y = np.asarray(ys, dtype=np.int32)
    perm = rng.permutation(len(y))
    return x[perm], y[perm]
