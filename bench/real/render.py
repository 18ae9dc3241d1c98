"""PIL renderers for the real-model bench: captcha words, documents, character scenes.

Every function takes a `numpy.random.Generator` so a fixed seed gives the same images.
Fonts: the DejaVu TrueType fonts when installed (Debian's fonts-dejavu-core), else PIL's
built-in scalable default font (Pillow >= 10.1).
"""
from __future__ import annotations

import glob
import string
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ALNUM = string.ascii_letters + string.digits
Box = tuple[int, int, int, int]


@lru_cache(maxsize=1)
def font_files() -> tuple[str, ...]:
    """Upright DejaVu fonts (italic/oblique and light skipped: captchas and papers rarely use them)."""
    found = sorted(glob.glob("/usr/share/fonts/truetype/dejavu/DejaVu*.ttf"))
    keep = [f for f in found if not any(s in f for s in ("Oblique", "Italic", "ExtraLight"))]
    return tuple(keep)


@lru_cache(maxsize=256)
def _font(index: int, size: int) -> ImageFont.FreeTypeFont:
    files = font_files()
    if not files:
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(files[index % len(files)], size)


def font(rng: np.random.Generator, size: int, bold: bool | None = None) -> ImageFont.FreeTypeFont:
    files = font_files()
    idx = list(range(max(1, len(files))))
    if files and bold is not None:
        idx = [i for i in idx if ("Bold" in files[i]) == bold] or idx
    return _font(int(rng.choice(idx)), size)


def random_word(rng: np.random.Generator, lo: int = 2, hi: int = 9) -> str:
    n = int(rng.integers(lo, hi + 1))
    return "".join(rng.choice(list(string.ascii_lowercase), n))


def _dark(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 110, 3))


def _light(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(170, 256, 3))


def captcha(rng: np.random.Generator, size: tuple[int, int] = (160, 60)) -> tuple[Image.Image, str]:
    """A 4-6 character alphanumeric captcha: light background, noise lines and dots, dark glyphs."""
    text = "".join(rng.choice(list(ALNUM), int(rng.integers(4, 7))))
    img = Image.new("RGB", size, _light(rng))
    d = ImageDraw.Draw(img)
    w, h = size
    for _ in range(int(rng.integers(2, 5))):
        d.line([tuple(rng.integers(0, w, 1).tolist() + rng.integers(0, h, 1).tolist()) for _ in range(2)],
               fill=tuple(int(v) for v in rng.integers(80, 200, 3)), width=1)
    for _ in range(60):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        d.point((x, y), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    f = font(rng, int(rng.integers(26, 34)), bold=bool(rng.random() < 0.5))
    box = d.textbbox((0, 0), text, font=f)
    tw, th = box[2] - box[0], box[3] - box[1]
    x = int(rng.integers(2, max(3, w - tw - 2)))
    y = int(rng.integers(0, max(1, h - th - box[1])))
    d.text((x, y), text, font=f, fill=_dark(rng))
    return img, text


def _paragraph(d: ImageDraw.ImageDraw, rng: np.random.Generator, x: int, y: int, width: int,
               lines: int, size: int) -> Box:
    f = font(rng, size, bold=False)
    lh = int(size * 1.35)
    right = x
    for i in range(lines):
        words, cx = [], x
        last = i == lines - 1
        limit = x + (width if not last else int(width * rng.uniform(0.3, 0.9)))
        while True:
            w = random_word(rng)
            wl = d.textlength(w + " ", font=f)
            if cx + wl > limit:
                break
            words.append(w)
            cx += wl
        d.text((x, y + i * lh), " ".join(words), font=f, fill=(20, 20, 20))
        right = max(right, int(cx))
    return x, y, right, y + lines * lh


def _table(d: ImageDraw.ImageDraw, rng: np.random.Generator, x: int, y: int, width: int) -> Box:
    rows, cols = int(rng.integers(3, 7)), int(rng.integers(2, 6))
    rh, cw = int(rng.integers(18, 26)), width // cols
    f = font(rng, 11, bold=False)
    for r in range(rows + 1):
        d.line([(x, y + r * rh), (x + cols * cw, y + r * rh)], fill=(0, 0, 0), width=1)
    for c in range(cols + 1):
        d.line([(x + c * cw, y), (x + c * cw, y + rows * rh)], fill=(0, 0, 0), width=1)
    for r in range(rows):
        for c in range(cols):
            cell = random_word(rng, 1, 6) if r == 0 else f"{rng.uniform(0, 999):.1f}"
            d.text((x + c * cw + 4, y + r * rh + 4), cell, font=f, fill=(0, 0, 0))
    return x, y, x + cols * cw, y + rows * rh


def _figure(d: ImageDraw.ImageDraw, rng: np.random.Generator, x: int, y: int, w: int, h: int) -> Box:
    d.rectangle([x, y, x + w, y + h], outline=(60, 60, 60), fill=_light(rng))
    for _ in range(int(rng.integers(3, 8))):
        px, py = int(rng.integers(x, x + w - 20)), int(rng.integers(y, y + h - 20))
        s = int(rng.integers(10, max(11, min(w, h) // 2)))
        shape = d.ellipse if rng.random() < 0.5 else d.rectangle
        shape([px, py, min(px + s, x + w), min(py + s, y + h)], fill=_dark(rng))
    return x, y, x + w, y + h


def document(rng: np.random.Generator, size: tuple[int, int] = (595, 842)) -> tuple[Image.Image, list[tuple[str, Box]]]:
    """An A4-ratio page: header, title, paragraphs, a table or figure with caption, footer.

    Returns the page and its ground-truth blocks as (CDLA class name, box) pairs.
    """
    w, h = size
    img = Image.new("RGB", size, (255, 255, 255))
    d = ImageDraw.Draw(img)
    m = int(w * 0.09)
    blocks: list[tuple[str, Box]] = []
    hb = d.textbbox((m, 22), " ".join(random_word(rng) for _ in range(4)), font=font(rng, 10, bold=False))
    d.text((m, 22), " ".join(random_word(rng) for _ in range(4)), font=font(rng, 10, bold=False), fill=(90, 90, 90))
    blocks.append(("header", hb))
    tf = font(rng, int(rng.integers(20, 28)), bold=True)
    title = " ".join(random_word(rng, 3, 9).capitalize() for _ in range(int(rng.integers(2, 5))))
    blocks.append(("title", d.textbbox((m, 60), title, font=tf)))
    d.text((m, 60), title, font=tf, fill=(0, 0, 0))
    y = blocks[-1][1][3] + 24
    while y < h - 140:
        kind = str(rng.choice(["text", "text", "table", "figure"]))
        if kind == "text":
            box = _paragraph(d, rng, m, y, w - 2 * m, int(rng.integers(3, 8)), int(rng.integers(10, 13)))
            blocks.append(("text", box))
        else:
            if kind == "table":
                box = _table(d, rng, m, y, w - 2 * m)
            else:
                box = _figure(d, rng, m + 40, y, w - 2 * m - 80, int(rng.integers(100, 180)))
            if box[3] > h - 100:
                d.rectangle(box, fill=(255, 255, 255))
                break
            blocks.append((kind, box))
            cap = f"{'Table' if kind == 'table' else 'Figure'} {int(rng.integers(1, 9))}: " + " ".join(
                random_word(rng) for _ in range(int(rng.integers(3, 8))))
            cf = font(rng, 10, bold=False)
            cy = box[3] + 6
            blocks.append((f"{kind}_caption", d.textbbox((m, cy), cap, font=cf)))
            d.text((m, cy), cap, font=cf, fill=(0, 0, 0))
            box = blocks[-1][1]
        y = box[3] + int(rng.integers(14, 26))
    foot = str(int(rng.integers(1, 300)))
    blocks.append(("footer", d.textbbox((w // 2, h - 40), foot, font=font(rng, 10, bold=False))))
    d.text((w // 2, h - 40), foot, font=font(rng, 10, bold=False), fill=(90, 90, 90))
    return img, blocks


def _background(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A photo-like clutter: colour gradient, soft blobs, pixel noise."""
    w, h = size
    a, b = rng.integers(40, 230, 3), rng.integers(40, 230, 3)
    t = np.linspace(0, 1, w)[None, :, None] * np.ones((h, 1, 1))
    arr = a * (1 - t) + b * t
    img = Image.fromarray(arr.astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(5, 15))):
        x, y, s = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(20, 120))
        d.ellipse([x, y, x + s, y + s], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    noise = rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(img, np.float32) + noise, 0, 255).astype(np.uint8))


def char_scene(rng: np.random.Generator, size: tuple[int, int] = (384, 344)) -> tuple[Image.Image, list[Box]]:
    """A click-captcha-like scene: 3-6 large outlined glyphs scattered on a cluttered background."""
    img = _background(rng, size)
    boxes: list[Box] = []
    for _ in range(int(rng.integers(3, 7))):
        ch = str(rng.choice(list(ALNUM)))
        f = font(rng, int(rng.integers(34, 56)), bold=True)
        glyph = Image.new("RGBA", (90, 90), (0, 0, 0, 0))
        gd = ImageDraw.Draw(glyph)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        gd.text((20, 10), ch, font=f, fill=colour + (255,), stroke_width=2, stroke_fill=(255, 255, 255, 255))
        glyph = glyph.rotate(float(rng.uniform(-35, 35)), resample=Image.BILINEAR)
        bb = glyph.getbbox()
        if bb is None:
            continue
        for _try in range(20):
            x, y = int(rng.integers(0, size[0] - 90)), int(rng.integers(0, size[1] - 90))
            box = (x + bb[0], y + bb[1], x + bb[2], y + bb[3])
            if all(_iou(box, o) == 0 for o in boxes):
                img.paste(glyph, (x, y), glyph)
                boxes.append(box)
                break
    return img, boxes


def _iou(a: Box, b: Box) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
