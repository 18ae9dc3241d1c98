"""The quality gate on a real model's prune, judged with the output kinds of this checkout and
with the shape rule alone, next to the task metric (bench/real_models.py's data and decoder).

    PYTHONPATH=.:cli python bench/gate_kinds_real.py layout_picodet PRUNED.onnx [--samples 32]

Runs the original and PRUNED on the first --samples evaluation inputs (held out from
calibration), prints per output the kind and agreement both ways and the two verdicts at the
default gate, then the task metric of both models on the whole evaluation set."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_models as rm  # noqa: E402
from real.specs import SPECS  # noqa: E402

from onnxprune.deploy.verify import compare, decide_kinds, verdict  # noqa: E402
from onnxprune.options import PruneOptions  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("pruned")
    ap.add_argument("--samples", type=int, default=32)
    a = ap.parse_args()
    spec = SPECS[a.model]
    original = rm.DATA / spec.name / "model.onnx"
    ev = rm.load_eval(spec)
    sess_o, sess_p = rm.session(original), rm.session(Path(a.pruned))
    names = [o.name for o in sess_o.get_outputs()]
    runs = [(sess_o.run(None, spec.to_feed(ev, i)), sess_p.run(None, spec.to_feed(ev, i)))
            for i in range(a.samples)]
    want = [np.concatenate([r[0][k] for r in runs]) for k in range(len(names))]
    got = [np.concatenate([r[1][k] for r in runs]) for k in range(len(names))]
    model = onnx.load(str(original))
    for label, kinds in [("graph + shape (this checkout)", decide_kinds(names, want, model)),
                         ("shape rule alone", None)]:
        fids = compare(names, want, got, kinds)
        v = verdict(fids, PruneOptions().min_fidelity)
        print(f"## {label}: {v['verdict']} (worst {v['worst_output']}: {v['fidelity']:.3f})")
        for f in fids:
            print(f"  {f.name:20s} {f.kind:12s} {f.agreement:.3f}  {f.kind_from}")
    full_ref = rm.predict(spec, original, ev)
    print("task, original vs truth:", spec.score(full_ref, full_ref, ev))
    print("task, pruned:", spec.score(rm.predict(spec, Path(a.pruned), ev), full_ref, ev))


if __name__ == "__main__":
    main()
