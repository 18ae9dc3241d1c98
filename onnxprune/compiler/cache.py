"""--prune-cache: a pruned model whose attention heads shrank its key-value cache inputs and
outputs records which heads it kept (metadata key `onnxprune.cache_heads`: per cache tensor,
its head axis and the kept heads' indices in the original). Whoever runs it on the original's
inputs (the guard, verification, the next round's scoring) slices the past with `narrow_feeds`;
its cache outputs are compared with the original's on the kept heads (`widen_outputs`)."""
from __future__ import annotations

import json
from typing import Mapping, Sequence

import numpy as np
import onnx

META = "onnxprune.cache_heads"
CacheHeads = dict[str, tuple[int, np.ndarray]]  # tensor name -> (head axis, kept indices)


def cache_heads(model: onnx.ModelProto) -> CacheHeads:
    """The kept heads a pruned model records (empty for any other model)."""
    for prop in model.metadata_props:
        if prop.key == META:
            return {name: (int(v["axis"]), np.asarray(v["kept"], np.int64))
                    for name, v in json.loads(prop.value).items()}
    return {}


def record_cache_heads(model: onnx.ModelProto, heads: CacheHeads) -> None:
    """Write (or compose with the model's own record: rounds prune a pruned model) the kept
    heads into the model's metadata, as indices into the original's heads."""
    before = cache_heads(model)
    heads = {name: (axis, before[name][1][kept] if name in before else kept)
             for name, (axis, kept) in heads.items()}
    merged = {**before, **heads}
    props = [p for p in model.metadata_props if p.key != META]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    if merged:
        model.metadata_props.add(key=META, value=json.dumps(
            {n: {"axis": a, "kept": k.tolist()} for n, (a, k) in merged.items()}))


def narrow_feeds(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The original's inputs for `model`: each cache input sliced to the kept heads."""
    heads = cache_heads(model)
    return {k: np.take(v, heads[k][1], axis=heads[k][0]) if k in heads else v
            for k, v in feeds.items()}


def widen_outputs(model: onnx.ModelProto, names: Sequence[str], got: Sequence[np.ndarray],
                  reference: Sequence[np.ndarray]) -> list[np.ndarray]:
    """`model`'s outputs in the original's shapes: a cache output's kept heads at their places,
    the removed heads' taken from the original's (so a comparison reads the kept heads only)."""
    heads = cache_heads(model)
    out = []
    for name, g, ref in zip(names, got, reference):
        if name in heads:
            axis, kept = heads[name]
            wide = np.array(ref, copy=True)
            index = [slice(None)] * wide.ndim
            index[axis] = kept
            wide[tuple(index)] = g
            g = wide
        out.append(g)
    return out
