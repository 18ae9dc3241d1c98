"""The default command's plan (`--dry-run`) on ddddocr's CRNN: as shipped (batch 1 baked in,
so normalize folds the run-time Reshape targets to literals) on today's fallback path (the
batch-symbolic twin switched off), as shipped with the twin (`fixedbatch.batch_twin`, chosen
in `api._prepare`), and with its input batch made symbolic by hand.

    PYTHONPATH=.:cli python bench/plan_seqfirst.py     # needs bench/.cache (real_models.py)
"""
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import onnx

import onnxprune.api as api
from onnxprune.api import plan_prune
from onnxprune.compiler.analyze import analyze
from onnxprune.compiler.normalize import normalize
from onnxprune.scoring.fixedbatch import batch_twin

DATA = Path(__file__).resolve().parent / ".cache/data/ocr_crnn"
path = DATA / "model.onnx"
with np.load(DATA / "calib.npz") as z:
    data = {k: z[k][:32] for k in z.files}
t0 = time.perf_counter()
twin, why = batch_twin(onnx.load(str(path)), data)
print(f"batch_twin: {'accepted' if twin else 'refused'} ({why}) in {time.perf_counter() - t0:.1f}s")
with_twin = api.with_batch_twin
for variant in ("shipped, no twin", "shipped, twin", "symbolic by hand"):
    m = onnx.load(str(path))
    api.with_batch_twin = with_twin if variant == "shipped, twin" else (lambda am, data: am)
    if variant == "symbolic by hand":
        m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
        del m.graph.output[0].type.tensor_type.shape.dim[:]
    print(variant, "batch_mixing (source analysed):", analyze(normalize(m)).batch_mixing, flush=True)
    t0 = time.perf_counter()
    p = plan_prune(m, data, ratio=0.5)
    d = p.to_json() if hasattr(p, "to_json") else dataclasses.asdict(p)
    keep = {k: d[k] for k in ("evaluations", "seconds_per_evaluation", "scoring_s", "samples") if k in d}
    print(variant, f"{time.perf_counter() - t0:.1f}s", json.dumps(keep, default=str)[:1500], flush=True)
api.with_batch_twin = with_twin
