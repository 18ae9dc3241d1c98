"""Task metric for a pruned Silero VAD: speech / no-speech decisions (prob > 0.5) of the
original and the pruned model on bench/real/vad_inputs.py's evaluation chunks, stateless
(zero state per chunk, as onnxprune scores it) and streaming (state carried chunk to chunk,
as silero_vad's wrapper runs it).

    python bench/real/vad_metric.py ORIGINAL.onnx PRUNED.onnx DATA_DIR
"""
from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort


def session(path: str) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(path, so)


def feeds(sess, x, state):
    f = {"input": x, "state": state}
    if any(i.name == "sr" for i in sess.get_inputs()):
        f["sr"] = np.array(16000, np.int64)
    return f


def stateless(sess, w):
    return sess.run(None, feeds(sess, w, np.zeros((2, len(w), 128), np.float32)))[0].ravel()


def streaming(sess, w):
    st, out = np.zeros((2, 1, 128), np.float32), []
    for x in w:
        p, st = sess.run(None, feeds(sess, x[None], st))
        out.append(p.item())
    return np.array(out)


def main() -> None:
    orig, pruned, data = session(sys.argv[1]), session(sys.argv[2]), np.load(f"{sys.argv[3]}/vad_stream.npz")
    w, lab = data["windows"], data["label"]
    for name, run in (("stateless", stateless), ("streaming", streaming)):
        a, b = run(orig, w), run(pruned, w)
        print(f"{name}: n={len(w)} decision agreement {np.mean((a > 0.5) == (b > 0.5)):.3f}  "
              f"mean |dp| {np.abs(a - b).mean():.4f}  max |dp| {np.abs(a - b).max():.3f}  "
              f"speech share orig {np.mean(a > 0.5):.3f} pruned {np.mean(b > 0.5):.3f}  "
              f"vs synthetic labels orig {np.mean((a > 0.5) == lab):.3f} pruned {np.mean((b > 0.5) == lab):.3f}")


if __name__ == "__main__":
    main()
