"""Ops the analysis does not follow (barriers with the default reason) whose other facts are
known: which of them keep samples apart, and how shape vectors flow through Gather."""
from __future__ import annotations

from ..graph import const_value, norm_axis, rank_of
from .layout import picks_leading_axis
from .registry import Handler, axis_is_batch, register


@register("Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or",
          "Xor", "Size", "Constant", "ConstantOfShape", "Range", "Expand", "Tile",
          "DepthToSpace", "SpaceToDepth", "Trilu")
class Samplewise(Handler):
    """Per element, per sample, or shape plumbing: never combines samples."""

    samplewise = True


@register("Gather")
class Gather(Handler):
    def explain(self, node):
        return "an embedding lookup (Gather)" if const_value(node.inputs[0]) is not None else None

    def mixes_batch(self, node, opset):
        if const_value(node.inputs[0]) is not None:
            return False  # a lookup in a table (embeddings): the output follows the indices' batch
        rank = rank_of(node.inputs[0])
        if rank is not None and rank <= 1:
            return False  # shape vectors
        producer = node.inputs[0].inputs[0] if node.inputs[0].inputs else None
        if producer is not None and picks_leading_axis(producer):
            return False  # one part of a Transpose that put the batch second (SVTR's q/k/v)
        return rank is None or norm_axis(int(node.attrs.get("axis", 0)), rank) == 0

    def eval_shape(self, node, dims):
        """Entries of a shape vector picked by constant indices."""
        data, index = [dims(t) for t in node.inputs]
        if data is None or index is None or int(node.attrs.get("axis", 0)) != 0:
            return None
        idx = [i for i in index] if isinstance(index, list) else None
        if idx is None or any(not isinstance(i, int) or not -len(data) <= i < len(data) for i in idx):
            return None
        return [data[i] for i in idx]


@register("ArrayFeatureExtractor", domain="ai.onnx.ml")
class ArrayFeatureExtractor(Handler):
    """ai.onnx.ml: picks X's entries along its last axis at indices Y."""

    def mixes_batch(self, node, opset):
        # a lookup in a constant table (skl2onnx's label branch: classes[argmax]): each output
        # entry follows its own sample's index, whatever axis ORT lays the result out on
        return const_value(node.inputs[0]) is None


@register("ArgMax", "ArgMin")
class ArgReduce(Handler):
    def mixes_batch(self, node, opset):
        return axis_is_batch(node, "axis", 0)


@register("TopK")
class TopK(Handler):
    def mixes_batch(self, node, opset):
        return axis_is_batch(node, "axis", -1)


@register("CumSum")
class CumSum(Handler):
    """A barrier for channels; it keeps samples apart unless it sums along the batch axis
    (RoBERTa's position ids: a cumulative sum of the mask over the sequence)."""

    def mixes_batch(self, node, opset):
        rank, axis = rank_of(node.inputs[0]), const_value(node.inputs[1])
        if rank is None or axis is None or axis.size != 1:
            return True
        return norm_axis(int(axis.reshape(-1)[0]), rank) == 0
