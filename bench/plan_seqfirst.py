"""The default command's plan (`--dry-run`) on ddddocr's CRNN, as shipped (batch 1 baked in,
so normalize folds the run-time Reshape targets to literals) and with its input batch made
symbolic (the targets stay run-time: the batch-axis pass follows the batch on axis 1).

    PYTHONPATH=.:cli python bench/plan_seqfirst.py     # needs bench/.cache (real_models.py)
"""
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import onnx

from onnxprune.api import plan_prune
from onnxprune.compiler.analyze import analyze
from onnxprune.compiler.normalize import normalize

DATA = Path(__file__).resolve().parent / ".cache/data/ocr_crnn"
path = DATA / "model.onnx"
with np.load(DATA / "calib.npz") as z:
    data = {k: z[k][:32] for k in z.files}
for variant in ("shipped", "symbolic"):
    m = onnx.load(str(path))
    if variant == "symbolic":
        m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
        del m.graph.output[0].type.tensor_type.shape.dim[:]
    print(variant, "batch_mixing:", analyze(normalize(m)).batch_mixing, flush=True)
    t0 = time.perf_counter()
    p = plan_prune(m, data, ratio=0.5)
    d = p.to_json() if hasattr(p, "to_json") else dataclasses.asdict(p)
    keep = {k: d[k] for k in ("evaluations", "seconds_per_evaluation", "scoring_s", "samples") if k in d}
    print(variant, f"{time.perf_counter() - t0:.1f}s", json.dumps(keep, default=str)[:1500], flush=True)
