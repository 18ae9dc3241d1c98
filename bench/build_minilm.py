"""A MiniLM-L6-sized sentence encoder for the cost bench (issue 16), built from a local config.

    python bench/build_minilm.py [--out bench/.cache/minilm_l6.onnx]

Needs torch==2.13.0 and transformers (dev tools, like models/build_zoo.py). BertModel with the
all-MiniLM-L6-v2 shape (vocab 30522, hidden 384, 12 heads x 32, FFN 1536, 6 layers), random
weights (seeded), eager attention, exported by the legacy exporter at opset 14 with dynamic batch
and sequence; the output is `last_hidden_state` [batch, seq, 384]. 22.7 M parameters, about
90 MB, so it is built here and not committed. Checked against PyTorch at two shapes.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DIMS = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
            intermediate_size=1536, max_position_embeddings=512)

def build(out: Path) -> None:
    import onnxruntime as ort
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig(**DIMS, attn_implementation="eager"), add_pooling_layer=False).eval()

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids, mask):
            return self.m(input_ids=ids, attention_mask=mask, return_dict=True).last_hidden_state

    wrap = Wrap(model).eval()
    args = tuple(torch.from_numpy(v) for v in inputs(2, 16, 1).values())
    out.parent.mkdir(parents=True, exist_ok=True)
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
            "last_hidden_state": {0: "batch", 1: "seq"}}
    with torch.no_grad():
        torch.onnx.export(wrap, args, str(out), dynamo=False, opset_version=14,
                          input_names=["input_ids", "attention_mask"],
                          output_names=["last_hidden_state"], dynamic_axes=axes,
                          do_constant_folding=True)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch, seq in [(1, 7), (3, 32)]:
        x = inputs(batch, seq, 2)
        with torch.no_grad():
            want = wrap(*(torch.from_numpy(v) for v in x.values())).numpy()
        got = sess.run(None, x)[0]
        err = float(np.abs(got - want).max())
        assert err < 1e-3, f"ONNX Runtime differs from PyTorch by {err} at {batch}x{seq}"
    print(f"wrote {out} ({out.stat().st_size / 1e6:.0f} MB)")

def inputs(batch: int, seq: int, seed: int) -> dict[str, np.ndarray]:
    """Token ids from the vocabulary's word-piece range with [CLS] ... [SEP], mask 1 on a random
    prefix of at least half the tokens (padding 0), as a tokenizer's batch would look."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1996, 30522, (batch, seq)).astype(np.int64)
    mask = np.ones((batch, seq), np.int64)
    for i, n in enumerate(rng.integers(max(2, seq // 2), seq + 1, batch)):
        ids[i, 0], ids[i, n - 1] = 101, 102
        mask[i, n:], ids[i, n:] = 0, 0
    return {"input_ids": ids, "attention_mask": mask}

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / ".cache" / "minilm_l6.onnx")
    build(ap.parse_args().out)
