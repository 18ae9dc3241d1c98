"""The quality gate's default (README, The quality gate): held-out agreement (the gate's figure)
and top-1 agreement on the separate test set, per model, metric and ratio.

    python bench/gate_threshold.py l1,random 0.5,0.75
"""
import sys, time, numpy as np, onnxprune
from onnxprune.deploy.verify import run_model, compare
M = "models/trained/"
CASES = [("models/digits_cnn.onnx", "models/digits_calib.npz", "models/digits_test.npz"),
         (M+"cnn_digits.onnx", M+"digits_calib.npz", M+"digits_test.npz"),
         (M+"mlp_digits.onnx", M+"digits_flat_calib.npz", M+"digits_flat_test.npz"),
         (M+"lenet5_mnist.onnx", M+"mnist_calib.npz", M+"mnist_test.npz"),
         (M+"vgg_mnist.onnx", M+"mnist_calib.npz", M+"mnist_test.npz"),
         (M+"resnet_mnist.onnx", M+"mnist_calib.npz", M+"mnist_test.npz")]
metrics = sys.argv[1].split(",")
ratios = [float(r) for r in sys.argv[2].split(",")]
for model, cal, test in CASES:
    t = dict(np.load(test)); t.pop("labels", None)
    t = {k: v[:500] for k, v in t.items()}
    import onnx
    orig = onnx.load(model)
    want = run_model(orig, t)
    for metric in metrics:
        for r in ratios:
            t0 = time.time()
            res = onnxprune.prune(model, cal, ratio=r, metric=metric, latency=False, min_fidelity=0)
            v = res.report["verification"]
            got = run_model(res.model, t)
            f = compare(["o"], want, got)[0]
            print(f"{model.split('/')[-1]:18s} {metric:8s} {r:.2f} held-out n={v['samples']:3d} "
                  f"agree={v['fidelity']:.3f}  test n={len(want[0])} agree={f.agreement:.3f} "
                  f"({time.time()-t0:.0f}s)", flush=True)
