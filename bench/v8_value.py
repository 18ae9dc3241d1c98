"""Value function on a trained YOLOv8-style detector: the class/box-aware default vs old NMSE.

onnxprune's default value function for an output the graph reads as YOLOv8's `class_boxes`
([N, 4 + classes, anchors] = Concat(box xywh in pixels, Sigmoid(class logits))) is NegNMSE
with `class_boxes` (classes and boxes normalized apart, each box's error weighted by the
reference's best class probability); `value="neg_nmse"` is the old one-variance NMSE. This
bench measures both with a task metric on a small detector trained here.

Protocol
  --prepare (torch venv): a synthetic detection set drawn with numpy: 128x128 RGB, smooth
    noise + stripes + pixel noise background, 1-6 objects of 4 classes (0 rectangle,
    1 ellipse, 2 triangle, 3 cross), random colours kept apart from the background's, sizes
    10-60 px, overlap up to 0.3 of the smaller box. A YOLOv8-style model (models/build_zoo.py's
    YConv and C2f; the V8Detect head pattern: per level cv2 -> 4 x 16 DFL bins, cv3 -> class
    logits, DFL softmax expectation with a fixed 1x1 conv, anchors x strides) at strides
    8/16/32, output cat((xywh, cls.sigmoid()), 1) = [N, 8, 336]. Trained on fresh images
    every step (seed 0 stream): anchors whose centre is inside a GT box and within 2.5
    strides of its centre take that GT (the smallest if several); BCE on classes with an
    IoU-aware target (a positive's target is its predicted box's IoU with its GT, the others
    background; hard 1 targets left many partial and other-class boxes above 0.25, F1 0.79),
    GIoU + DFL loss on positives; Adam, batch 32, lr cosine over the step or
    time budget. Legacy export (dynamo=False, opset 17, dynamic batch) to
    bench/.cache/v8/v8_shapes.onnx; calib.npz (64 images, seed 1, key 'input') and eval.npz
    (512 images, seed 2, GT boxes xyxy / classes padded with -1).
  Task metric (numpy): anchors with best-class prob > 0.25, class-wise NMS at IoU 0.5, F1
    against GT at IoU >= 0.5 with the same class (greedy by score, micro over the 512 images);
    "agreement F1": the same against the original model's own detections as pseudo-GT.
  --compare (onnxprune venv): ratios 0.3 and 0.5 (target macs, the default), seeds 0 1 2,
    value None (the default: NegNMSE(class_boxes={0})) vs 'neg_nmse' (old), everything else
    default, calibration = calib.npz. Records task F1, agreement F1, removed fractions, the
    gate's verdict, the shipped candidate and allocation, wall seconds and the value function
    scoring used (onnxprune.scoring.run.value_function on the analyzed model); markdown table
    on stdout, raw records in bench/.cache/v8/compare.json (rewritten; --append adds).
    The value function also drives the guard (global vs uniform allocation, which candidate
    ships), so --variants adds diagnostics (VARIANTS): each value with --uniform (same widths,
    only the ranking inside groups differs), and one run's scores reused under the other
    value function's guard (prune(scores=...)).

    nice -n 10 /work/wt/zoo/.venv/bin/python bench/v8_value.py --prepare   # ~8 min on 1 core
    PYTHONPATH=.:cli nice -n 10 .venv/bin/python bench/v8_value.py --compare   # ~7 min
    PYTHONPATH=.:cli nice -n 10 .venv/bin/python bench/v8_value.py --compare --variants \
        default,neg_nmse,default/uniform,neg_nmse/uniform,default-scores/neg_nmse-guard,neg_nmse-scores/default-guard
    python bench/v8_value.py --table   # the table of compare.json
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / ".cache" / "v8"
MODEL = CACHE / "v8_shapes.onnx"
CALIB, EVAL, META, COMPARE = (CACHE / "calib.npz", CACHE / "eval.npz", CACHE / "meta.json",
                              CACHE / "compare.json")
SIZE, NC, REG, MAX_OBJ = 128, 4, 16, 6
STRIDES = (8, 16, 32)
CLASSES = ("rectangle", "ellipse", "triangle", "cross")
CONF, NMS_IOU, MATCH_IOU = 0.25, 0.5, 0.5


# ---------------------------------------------------------------- data (numpy only)

def _smooth(rng: np.random.Generator, cells: int, amp: float) -> np.ndarray:
    """[3, SIZE, SIZE] bilinear-upsampled random grid."""
    grid = rng.normal(0, amp, (3, cells + 1, cells + 1))
    t = (np.arange(SIZE) + 0.5) / SIZE * cells
    i = np.minimum(t.astype(int), cells - 1)
    f = t - i
    rows = grid[:, i] * (1 - f)[None, :, None] + grid[:, i + 1] * f[None, :, None]
    return rows[:, :, i] * (1 - f) + rows[:, :, i + 1] * f


def _shape_mask(rng: np.random.Generator, cls: int, w: int, h: int) -> np.ndarray:
    v, u = (np.mgrid[0:h, 0:w] + 0.5) / np.array([h, w])[:, None, None]
    if cls == 0:
        return np.ones((h, w), bool)
    if cls == 1:
        return (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    if cls == 2:  # isosceles, apex on one of the four sides
        a, b = {0: (u, v), 1: (u, 1 - v), 2: (v, u), 3: (v, 1 - u)}[int(rng.integers(4))]
        return np.abs(a - 0.5) <= b / 2 + 0.5 / max(w, h)
    t = rng.uniform(0.25, 0.4)
    return (np.abs(u - 0.5) <= t / 2) | (np.abs(v - 0.5) <= t / 2)


def draw(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image [3, SIZE, SIZE] float32 in [0, 1], boxes [k, 4] xyxy pixels, classes [k]."""
    base = rng.uniform(0.1, 0.9, 3)
    img = base[:, None, None] + _smooth(rng, int(rng.integers(3, 9)), 0.12)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, 16)
    img = img + rng.uniform(0, 0.08) * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) / period * 2 * np.pi)
    boxes, classes = [], []
    for _ in range(int(rng.integers(1, MAX_OBJ + 1))):
        for _try in range(20):
            w, h = (int(s) for s in rng.integers(10, 61, 2))
            x0, y0 = int(rng.integers(0, SIZE - w + 1)), int(rng.integers(0, SIZE - h + 1))
            box = np.array([x0, y0, x0 + w, y0 + h], float)
            if all(_inter(box, b) <= 0.3 * min(_area(box), _area(b)) for b in boxes):
                break
        else:
            continue
        cls = int(rng.integers(NC))
        while True:
            colour = rng.uniform(0, 1, 3)
            if np.linalg.norm(colour - base) > 0.35:
                break
        mask = _shape_mask(rng, cls, w, h)
        patch = img[:, y0:y0 + h, x0:x0 + w]
        patch[:, mask] = (colour[:, None] + rng.normal(0, 0.03, (3, 1)))
        boxes.append(box)
        classes.append(cls)
    img = img + rng.normal(0, rng.uniform(0.01, 0.05), img.shape)
    return (np.clip(img, 0, 1).astype(np.float32), np.array(boxes, np.float32).reshape(-1, 4),
            np.array(classes, np.int64))


def _area(b: np.ndarray) -> float:
    return float((b[2] - b[0]) * (b[3] - b[1]))


def _inter(a: np.ndarray, b: np.ndarray) -> float:
    return float(max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1])))


def dataset(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n images [n, 3, S, S], boxes [n, MAX_OBJ, 4] and classes [n, MAX_OBJ] (-1: padding)."""
    rng = np.random.default_rng(seed)
    imgs = np.zeros((n, 3, SIZE, SIZE), np.float32)
    boxes = np.zeros((n, MAX_OBJ, 4), np.float32)
    classes = np.full((n, MAX_OBJ), -1, np.int64)
    for i in range(n):
        imgs[i], b, c = draw(rng)
        boxes[i, :len(c)], classes[i, :len(c)] = b, c
    return imgs, boxes, classes


# ---------------------------------------------------------------- task metric (numpy only)

def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), -1)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), -1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-9)


def detect(out: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """[N, 4 + NC, A] -> per image (boxes xyxy [k, 4], scores [k], classes [k]) after the
    confidence threshold and class-wise NMS."""
    dets = []
    for o in out.astype(np.float64):
        probs = o[4:]
        cls, score = probs.argmax(0), probs.max(0)
        keep = np.flatnonzero(score > CONF)
        xy, wh = o[:2, keep].T, o[2:4, keep].T
        boxes, score, cls = np.concatenate((xy - wh / 2, xy + wh / 2), 1), score[keep], cls[keep]
        chosen = []
        for c in np.unique(cls):
            idx = np.flatnonzero(cls == c)
            idx = idx[np.argsort(-score[idx], kind="stable")]
            iou = iou_matrix(boxes[idx], boxes[idx])
            alive = np.ones(len(idx), bool)
            for j in range(len(idx)):
                if alive[j]:
                    chosen.append(idx[j])
                    alive[j + 1:] &= iou[j, j + 1:] < NMS_IOU
        chosen = np.array(sorted(chosen, key=lambda k: -score[k]), int)
        dets.append((boxes[chosen].reshape(-1, 4), score[chosen], cls[chosen]))
    return dets


def f1(dets, gt_boxes, gt_classes) -> dict[str, float]:
    """Micro F1 over images: greedy by score, a detection matches the best-IoU unmatched GT
    of its class with IoU >= MATCH_IOU."""
    tp = n_det = n_gt = 0
    for (boxes, _score, cls), gb, gc in zip(dets, gt_boxes, gt_classes):
        valid = gc >= 0
        gb, gc = gb[valid], gc[valid]
        n_det, n_gt = n_det + len(cls), n_gt + len(gc)
        if not len(cls) or not len(gc):
            continue
        iou = iou_matrix(boxes, gb)
        iou[cls[:, None] != gc[None]] = 0
        used = np.zeros(len(gc), bool)
        for j in range(len(cls)):  # dets are sorted by score
            cand = np.where(used, 0, iou[j])
            k = int(cand.argmax())
            if cand[k] >= MATCH_IOU:
                used[k], tp = True, tp + 1
    p, r = tp / max(n_det, 1), tp / max(n_gt, 1)
    return {"f1": 2 * p * r / max(p + r, 1e-12), "precision": p, "recall": r,
            "detections": n_det, "gt": n_gt}


def pseudo_gt(dets) -> tuple[list[np.ndarray], list[np.ndarray]]:
    return [d[0] for d in dets], [d[2] for d in dets]


def run_onnx(model, imgs: np.ndarray, batch: int = 64) -> np.ndarray:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 2, 1
    sess = ort.InferenceSession(model if isinstance(model, (bytes, str)) else model.SerializeToString(),
                                so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: imgs[i:i + batch]})[0] for i in range(0, len(imgs), batch)])


# ---------------------------------------------------------------- model + training (torch)

def build_model():
    import torch
    import torch.nn as nn
    sys.path.insert(0, str(REPO / "models"))
    from build_zoo import C2f, YConv  # noqa: E402

    class V8Shapes(nn.Module):
        """YOLOv8 in miniature for 128x128: stem 16 (s2), 32 (s4), C2f 32 at s8 (P3), C2f 64
        at s16 (P4), C2f 128 at s32 (P5); V8Detect's head per level."""

        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(YConv(3, 16, 3, 2), YConv(16, 32, 3, 2))
            self.s8 = nn.Sequential(YConv(32, 32, 3, 2), C2f(32, 32, n=1))
            self.s16 = nn.Sequential(YConv(32, 64, 3, 2), C2f(64, 64, n=1, use_split=True))
            self.s32 = nn.Sequential(YConv(64, 128, 3, 2), C2f(128, 128, n=1))
            chans, hid = (32, 64, 128), 32
            self.cv2 = nn.ModuleList(nn.Sequential(YConv(c, hid, 3), nn.Conv2d(hid, 4 * REG, 1)) for c in chans)
            self.cv3 = nn.ModuleList(nn.Sequential(YConv(c, hid, 3), nn.Conv2d(hid, NC, 1)) for c in chans)
            for s, seq in zip(STRIDES, self.cv3):  # ultralytics' prior: few objects per cell
                nn.init.constant_(seq[-1].bias, math.log(5 / NC / (SIZE / s) ** 2))
            for seq in self.cv2:
                nn.init.constant_(seq[-1].bias, 1.0)
            self.dfl = nn.Conv2d(REG, 1, 1, bias=False).requires_grad_(False)
            self.dfl.weight.data[:] = torch.arange(REG, dtype=torch.float).view(1, REG, 1, 1)
            points, strides = [], []
            for s in STRIDES:
                n = SIZE // s
                yy, xx = torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5, indexing="ij")
                points.append(torch.stack((xx, yy), -1).view(-1, 2))
                strides.append(torch.full((n * n, 1), float(s)))
            self.register_buffer("anchors", torch.cat(points).T.unsqueeze(0))    # [1, 2, A] in cells
            self.register_buffer("strides", torch.cat(strides).T.unsqueeze(0))   # [1, 1, A]

        def raw(self, x):
            p3 = self.s8(self.stem(x))
            p4 = self.s16(p3)
            p5 = self.s32(p4)
            n = x.shape[0]
            feats = [torch.cat((self.cv2[i](p), self.cv3[i](p)), 1).view(n, 4 * REG + NC, -1)
                     for i, p in enumerate((p3, p4, p5))]
            return torch.cat(feats, 2).split((4 * REG, NC), 1)   # [n, 64, A], [n, NC, A]

        def forward(self, x):
            box, cls = self.raw(x)
            n = x.shape[0]
            dist = self.dfl(box.view(n, 4, REG, -1).transpose(2, 1).softmax(1)).view(n, 4, -1)
            lt, rb = dist.chunk(2, 1)
            xy = (self.anchors + (rb - lt) / 2) * self.strides
            wh = (lt + rb) * self.strides
            return torch.cat((torch.cat((xy, wh), 1), cls.sigmoid()), 1)

    return V8Shapes()


def detection_loss(model, box_raw, cls_raw, gt_boxes, gt_cls):
    """Centre-radius assignment; BCE on classes (a positive's target: its box's IoU),
    GIoU + DFL on positives."""
    import torch
    import torch.nn.functional as F
    n, a = cls_raw.shape[0], cls_raw.shape[2]
    stride = model.strides[0, 0]                                    # [A]
    centre = model.anchors[0].T * stride[:, None]                   # [A, 2] pixels
    valid = gt_cls >= 0                                             # [n, M]
    x0, y0, x1, y1 = gt_boxes.unbind(-1)                            # [n, M]
    ax, ay = centre[:, 0].view(1, 1, -1), centre[:, 1].view(1, 1, -1)
    inside = (ax > x0[..., None]) & (ax < x1[..., None]) & (ay > y0[..., None]) & (ay < y1[..., None])
    r = 2.5 * stride.view(1, 1, -1)
    near = ((ax - (x0 + x1)[..., None] / 2).abs() < r) & ((ay - (y0 + y1)[..., None] / 2).abs() < r)
    cand = inside & near & valid[..., None]                         # [n, M, A]
    area = ((x1 - x0) * (y1 - y0))[..., None].expand(-1, -1, a)
    g = torch.where(cand, area, torch.full_like(area, float("inf"))).argmin(1)   # [n, A]
    pos = cand.any(1)                                               # [n, A]
    n_pos = max(int(pos.sum()), 1)
    tcls = torch.zeros_like(cls_raw)
    if not pos.any():
        return F.binary_cross_entropy_with_logits(cls_raw, tcls, reduction="sum") / n_pos, {}
    tbox = gt_boxes.gather(1, g[..., None].expand(-1, -1, 4))[pos]  # [P, 4]
    c, s = centre.expand(n, -1, -1)[pos], stride.expand(n, -1)[pos]
    logits = box_raw.view(n, 4, REG, a).permute(0, 3, 1, 2)[pos]    # [P, 4, REG]
    dist = (logits.softmax(-1) * torch.arange(REG, dtype=logits.dtype)).sum(-1)  # [P, 4] cells
    pbox = torch.cat((c - dist[:, :2] * s[:, None], c + dist[:, 2:] * s[:, None]), 1)
    target = torch.cat((c - tbox[:, :2], tbox[:, 2:] - c), 1) / s[:, None]
    target = target.clamp(0, REG - 1 - 0.01)
    tl = target.floor().long()
    wr = target - tl
    dfl = (F.cross_entropy(logits.reshape(-1, REG), tl.view(-1), reduction="none") * (1 - wr).view(-1)
           + F.cross_entropy(logits.reshape(-1, REG), (tl + 1).view(-1), reduction="none") * wr.view(-1))
    giou, iou = _giou(pbox, tbox)
    # IoU-aware class targets (as VarifocalNet / ultralytics' TAL scores): a positive anchor's
    # target is its box's IoU with its GT, so the confidence ranks boxes by their quality
    assigned = gt_cls.clamp(min=0).gather(1, g)[pos]                # [P]
    tpos = torch.zeros(len(assigned), NC, dtype=cls_raw.dtype)
    tpos[torch.arange(len(assigned)), assigned] = iou.detach().clamp(min=0)
    tcls = tcls.permute(0, 2, 1).clone()
    tcls[pos] = tpos
    tcls = tcls.permute(0, 2, 1)
    cls_loss = (F.binary_cross_entropy_with_logits(cls_raw, tcls, reduction="sum")
                / max(float(tpos.sum()), 1.0))
    box_loss, dfl_loss = (1 - giou).mean(), dfl.mean()
    return cls_loss + 5 * box_loss + dfl_loss, {"cls": float(cls_loss), "giou": float(box_loss),
                                                  "dfl": float(dfl_loss), "pos": n_pos / n}


def _giou(a, b):
    import torch
    lt, rb = torch.max(a[:, :2], b[:, :2]), torch.min(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area_a, area_b = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(1), (b[:, 2:] - b[:, :2]).prod(1)
    union = area_a + area_b - inter + 1e-7
    hull = (torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])).prod(1) + 1e-7
    iou = inter / union
    return iou - (hull - union) / hull, iou


def prepare(args) -> None:
    import torch
    torch.set_num_threads(args.threads)  # 2 threads on 2 shared cores stalled (3 s/step): 1 by default
    torch.manual_seed(0)
    CACHE.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    calib, _, _ = dataset(1, 64)
    ev_imgs, ev_boxes, ev_cls = dataset(2, 512)
    np.savez(CALIB, input=calib)
    np.savez(EVAL, images=ev_imgs, boxes=ev_boxes, classes=ev_cls)
    print(f"data: calib {calib.shape}, eval {ev_imgs.shape} ({int((ev_cls >= 0).sum())} objects) "
          f"in {time.perf_counter() - t0:.1f}s", flush=True)

    model = build_model()
    torch.set_num_threads(args.threads)  # again: importing models/build_zoo.py sets 2
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"model: {params} trainable parameters", flush=True)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    rng = np.random.default_rng(0)
    budget = args.max_minutes * 60
    t_train, step, logs = time.perf_counter(), 0, []
    model.train()
    while step < args.steps:
        elapsed = time.perf_counter() - t_train
        progress = max(step / args.steps, elapsed / budget)
        if progress >= 1:
            break
        warm = min(1.0, (step + 1) / 100)
        for grp in opt.param_groups:
            grp["lr"] = args.lr * warm * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))
        imgs, boxes, cls = zip(*(_padded(draw(rng)) for _ in range(args.batch)))
        x = torch.from_numpy(np.stack(imgs))
        box_raw, cls_raw = model.raw(x)
        loss, parts = detection_loss(model, box_raw, cls_raw, torch.from_numpy(np.stack(boxes)),
                                     torch.from_numpy(np.stack(cls)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        logs.append(float(loss))
        if step % 100 == 0:
            print(f"step {step} {elapsed:.0f}s loss {np.mean(logs[-100:]):.3f} "
                  + " ".join(f"{k} {v:.3f}" for k, v in parts.items()), flush=True)
    train_s = time.perf_counter() - t_train
    model.eval()
    with torch.no_grad():
        torch.onnx.export(model, (torch.from_numpy(calib[:2]),), str(MODEL), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
        ref = model(torch.from_numpy(ev_imgs[:64])).numpy()
    out = run_onnx(str(MODEL), ev_imgs)
    print(f"export: max |onnx - torch| {np.abs(out[:64] - ref).max():.2e}", flush=True)
    task = f1(detect(out), ev_boxes, ev_cls)
    meta = {"train_s": train_s, "steps": step, "params": params, "final_loss": float(np.mean(logs[-100:])),
            "eval": task}
    META.write_text(json.dumps(meta, indent=1))
    print(f"trained {step} steps in {train_s:.0f}s; eval F1 {task['f1']:.3f} "
          f"(P {task['precision']:.3f} R {task['recall']:.3f}, {task['detections']} dets / {task['gt']} GT)")


def _padded(sample):
    img, b, c = sample
    boxes, cls = np.zeros((MAX_OBJ, 4), np.float32), np.full(MAX_OBJ, -1, np.int64)
    boxes[:len(c)], cls[:len(c)] = b, c
    return img, boxes, cls


# ---------------------------------------------------------------- compare (onnxprune)

# variant -> (value for scoring and the guard, the variant whose scores are reused or None,
# extra prune options). The first two are the comparison; the rest separate the ranking from
# the guard's choices (allocation global/uniform, candidate), which also use the value function.
VARIANTS = {
    "default": (None, None, {}),
    "neg_nmse": ("neg_nmse", None, {}),
    "default/uniform": (None, None, {"uniform": True}),
    "neg_nmse/uniform": ("neg_nmse", None, {"uniform": True}),
    "default-scores/neg_nmse-guard": ("neg_nmse", "default", {}),
    "neg_nmse-scores/default-guard": (None, "neg_nmse", {}),
}
LABELS = {"default": "default (class_boxes)", "neg_nmse": "neg_nmse (old)"}


def compare(args) -> None:
    import onnxprune
    from onnxprune.api import as_calibration, value_function

    calib = dict(np.load(CALIB))
    ev = np.load(EVAL)
    imgs, gt_boxes, gt_cls = ev["images"], ev["boxes"], ev["classes"]
    ref_dets = detect(run_onnx(str(MODEL), imgs))
    orig = f1(ref_dets, gt_boxes, gt_cls)
    pb, pc = pseudo_gt(ref_dets)
    print(f"original: F1 {orig['f1']:.3f} (P {orig['precision']:.3f} R {orig['recall']:.3f}, "
          f"{orig['detections']} detections / {orig['gt']} GT)", flush=True)
    am = onnxprune.analyze_model(str(MODEL))
    cal = as_calibration(calib, am.proto)
    chosen = {}
    for value in (None, "neg_nmse"):
        vf = value_function(am, cal, value)
        chosen[str(value)] = {"class": type(vf).__name__, "name": vf.name,
                              "class_boxes": sorted(getattr(vf, "class_boxes", ()))}
        print(f"value {value}: {chosen[str(value)]}", flush=True)
    records = json.loads(COMPARE.read_text())["records"] if COMPARE.exists() and args.append else []
    for ratio in args.ratios:
        for seed in args.seeds:
            scores = {}  # variant -> its run's scores, for the variants that reuse them
            for variant in _with_sources(args.variants):
                value, source, extra = VARIANTS[variant]
                rec = {"ratio": ratio, "seed": seed, "variant": variant, "value": value,
                       "scores_from": source, "options": extra, "value_function": chosen[str(value)]}
                t0 = time.perf_counter()
                try:
                    kw = dict(extra, **({} if value is None else {"value": value}))
                    if source is not None:
                        kw["scores"] = scores[source]
                    res = onnxprune.prune(str(MODEL), calib, ratio=ratio, seed=seed, **kw)
                except Exception:  # noqa: BLE001  a traceback is a finding for the lead
                    rec.update(error=traceback.format_exc(), wall_s=time.perf_counter() - t0)
                    print(rec["error"], flush=True)
                    records.append(rec)
                    continue
                rec["wall_s"] = time.perf_counter() - t0
                scores[variant] = res.scores
                rep = res.report
                dets = detect(run_onnx(res.model, imgs))
                ver = rep.get("verification") or {}
                rec.update(task=f1(dets, gt_boxes, gt_cls), agreement=f1(dets, pb, pc),
                           removed=rep.get("removed"), verdict=ver.get("verdict"),
                           fidelity=ver.get("fidelity"), measure=ver.get("measure"),
                           options_value=rep["options"].get("value"),
                           deploy=rep.get("deploy"), warnings=rep.get("warnings"),
                           groups=[{k: g.get(k) for k in ("id", "units", "kept", "prunable", "reason",
                                                           "sources")} for g in rep["groups"]],
                           before=rep["before"], after=rep["after"])
                d = rec["deploy"] if isinstance(rec["deploy"], dict) else {}
                print(f"ratio {ratio} seed {seed} {variant:30s}: F1 {rec['task']['f1']:.3f} agree "
                      f"{rec['agreement']['f1']:.3f} removed params {rec['removed'].get('params', 0):.3f} "
                      f"macs {rec['removed'].get('macs', 0):.3f} gate {rec['verdict']} "
                      f"({rec['fidelity']:.3f}) shipped {d.get('chosen')}/{d.get('allocation')} "
                      f"{rec['wall_s']:.0f}s", flush=True)
                records.append(rec)
                COMPARE.write_text(json.dumps({"original": orig, "value_functions": chosen,
                                               "records": records}, indent=1, default=_jsonable))
    print()
    print(table(records, orig))


def _with_sources(variants: list[str]) -> list[str]:
    """The variants in order, each one whose scores another reuses run before it."""
    out: list[str] = []
    for v in variants:
        src = VARIANTS[v][1]
        if src is not None and src not in out:
            out.append(src)
        if v not in out:
            out.append(v)
    return out


def _shipped(deploy) -> str:
    d = deploy[0] if isinstance(deploy, list) else deploy or {}
    return str(d.get("shipped", d.get("chosen", "?")))


def _jsonable(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def table(records, orig) -> str:
    lines = [f"original model: F1 {orig['f1']:.3f} on {orig['gt']} GT objects", "",
             "| budget (macs) | value function | F1 mean (min..max) | agreement F1 mean (min..max) "
             "| gate passed | params removed | MACs removed | shipped allocation |",
             "|---|---|---|---|---|---|---|---|"]
    order = list(VARIANTS)
    keys = sorted({(r["ratio"], r.get("variant", r.get("value"))) for r in records},
                  key=lambda k: (k[0], order.index(k[1]) if k[1] in order else 99))
    for ratio, variant in keys:
        mine = [r for r in records if r["ratio"] == ratio and r.get("variant", r.get("value")) == variant]
        rs = [r for r in mine if "task" in r]
        errs = len(mine) - len(rs)
        if not rs:
            lines.append(f"| {ratio} | {variant} | error x{errs} | | | | | |")
            continue
        f = [r["task"]["f1"] for r in rs]
        a = [r["agreement"]["f1"] for r in rs]
        p = [r["removed"]["params"] for r in rs]
        m = [r["removed"]["macs"] for r in rs]
        alloc = [r["deploy"].get("allocation", "?") if isinstance(r["deploy"], dict) else "?" for r in rs]
        lines.append(f"| {ratio} | {LABELS.get(variant, variant)} | {np.mean(f):.3f} ({min(f):.3f}..{max(f):.3f}) | "
                     f"{np.mean(a):.3f} ({min(a):.3f}..{max(a):.3f}) | "
                     f"{sum(r['verdict'] == 'passed' for r in rs)}/{len(rs)}"
                     f"{f' ({errs} errors)' if errs else ''} | {np.mean(p):.3f} | {np.mean(m):.3f} | "
                     f"{', '.join(f'{k} x{alloc.count(k)}' for k in sorted(set(alloc)))} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepare", action="store_true")
    ap.add_argument("--compare", action="store_true")
    ap.add_argument("--table", action="store_true", help="print the table of compare.json")
    ap.add_argument("--steps", type=int, default=4000)  # the cached model: 4000 steps, 430 s
    ap.add_argument("--max-minutes", type=float, default=10.0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training")
    ap.add_argument("--ratios", type=lambda s: [float(x) for x in s.split(",")], default=[0.3, 0.5])
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    ap.add_argument("--variants", type=lambda s: s.split(","), default=["default", "neg_nmse"],
                    help=f"comma-separated, of: {', '.join(VARIANTS)}")
    ap.add_argument("--append", action="store_true", help="add to compare.json's records")
    args = ap.parse_args()
    if args.prepare:
        prepare(args)
    if args.compare:
        compare(args)
    if args.table:
        doc = json.loads(COMPARE.read_text())
        print(table(doc["records"], doc["original"]))


if __name__ == "__main__":
    main()
