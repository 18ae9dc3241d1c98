"""The op-handler registry: one handler per (domain, op type), the one home of per-op facts.

A handler says, for one op, how channel ids flow from inputs to outputs (`analyze`), how
the node's members are rewritten once units are removed (`rewrite`), and every other fact
a stage needs about the op: the constant a removed input channel leaves (`compensation`),
its weight and MACs (`weight_input`, `macs`), how refit re-solves it (`refit_layout`),
whether it combines samples (`mixes_batch`), how it computes shape vectors (`eval_shape`)
and what it is, for a report (`explain`). The base class is a barrier with safe defaults
for every fact, so an op nobody knows is never guessed at. Ops in a domain without
handlers are barriers.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import onnx_graphsurgeon as gs

from ..graph import const_value, norm_axis, rank_of

if TYPE_CHECKING:  # pragma: no cover
    from ..analysis import MaskSite
    from ..context import AnalysisContext, RefitLayout, RewriteContext

Dims = list  # a shape vector: ints and dim names (str); None entries are unknown
DimsOf = Callable[[gs.Tensor], "Dims | None"]  # evaluates an input's shape vector


class Handler:
    """Base: a barrier. Subclasses override what they understand."""

    reason = "is not supported by the analysis"
    samplewise = False  # never combines, reorders or resizes samples (the batch axis)
    channel_blocked = False  # ONNX Runtime's CPU kernels run its channels in blocks (NCHWc):
    # a width off the block costs speed, so `--round-to` rounds the groups it touches

    def analyze(self, node: gs.Node, ctx: "AnalysisContext") -> None:
        ctx.pin_inputs(node, f"{node.op} {self.reason}")

    def rewrite(self, node: gs.Node, rw: "RewriteContext") -> None:
        """Default: nothing to rewrite (pass-through ops and barriers)."""

    def compensation(self, node: gs.Node, mean: np.ndarray) -> tuple[np.ndarray, int] | None:
        """For a consumer with a mask site: ([C_in, C_out] what input channel c at value
        mean[c] adds to each output channel, the output's channel axis)."""
        return None

    def weight_input(self, node: gs.Node) -> gs.Tensor | None:
        """The constant weight of a channel-mixing node (counted in params and MACs)."""
        return None

    def macs(self, node: gs.Node, shape: tuple[int, ...] | None = None) -> int:
        """Multiply-accumulates for one sample (dims that are not numbers count as 1);
        `shape`: `size_tensor`'s shape as measured on a calibration sample, for its own."""
        return 0

    def size_tensor(self, node: gs.Node) -> gs.Tensor | None:
        """The tensor whose dims besides batch and channels (a conv's H and W, a MatMul's
        sequence) scale the MACs beyond the weight (None: none do); where they are not
        numbers (exported as dynamic) the pipeline measures them on a calibration sample
        (`Analysis.measured`)."""
        return None

    def refit_layout(self, site: "MaskSite", node: gs.Node, keep_in: np.ndarray) -> "RefitLayout | None":
        """How refit.py re-solves this consumer's weights at its site (None: it does not)."""
        return None

    def mixes_batch(self, node: gs.Node, opset: int) -> bool:
        """Whether the node may combine samples along axis 0 (unknown ops: fail closed)."""
        return not self.samplewise

    def eval_shape(self, node: gs.Node, dims: DimsOf) -> Dims | None:
        """The node's output as a shape vector, from its inputs' (None: not evaluable)."""
        return None

    def explain(self, node: gs.Node) -> str | None:
        """What the node is, when channels that come out of it cannot be followed."""
        return None

    @property
    def analyzes(self) -> bool:
        """Whether it says anything about channels (a rule, or a barrier with its own reason),
        rather than only carrying other facts about an op the analysis does not follow."""
        return type(self).analyze is not Handler.analyze or self.reason != Handler.reason


class Barrier(Handler):
    def __init__(self, reason: str, samplewise: bool = False) -> None:
        self.reason = reason
        self.samplewise = samplewise


HANDLERS: dict[tuple[str, str], Handler] = {}  # (domain, op type) -> handler
_DEFAULT = Handler()
_CUSTOM = Barrier("is in a custom domain the analysis does not know")


def _domain(domain: str | None) -> str:
    return "" if domain in ("", "ai.onnx", None) else domain


def register(*op_types: str, domain: str = "") -> Callable[[type[Handler]], type[Handler]]:
    def deco(cls: type[Handler]) -> type[Handler]:
        add(cls(), *op_types, domain=domain)
        return cls
    return deco


def add(handler: Handler, *op_types: str, domain: str = "") -> None:
    for op in op_types:
        key = (_domain(domain), op)
        assert key not in HANDLERS, f"two handlers for {key}"
        HANDLERS[key] = handler


def unregister(*op_types: str, domain: str = "") -> None:
    for op in op_types:
        del HANDLERS[(_domain(domain), op)]


def register_barrier(reason: str, *op_types: str, samplewise: bool = False) -> None:
    add(Barrier(reason, samplewise), *op_types)


def handler_named(op: str, domain: str | None = "") -> Handler:
    """The handler of an op type (the default barrier for an unknown one)."""
    return HANDLERS.get((_domain(domain), op), _DEFAULT if _domain(domain) == "" else _CUSTOM)


def handler_for(node: gs.Node) -> Handler:
    return handler_named(node.op, node.domain)


def evaluate(tensor: gs.Tensor, depth: int = 0) -> Dims | None:
    """Dims of a 1-D int64 shape tensor (numbers or dim names), or None if not evaluable
    (here, beside the handlers whose `eval_shape` it calls; shapes.py re-exports it)."""
    value = const_value(tensor)
    if value is not None:
        return [int(v) for v in np.atleast_1d(value).reshape(-1)] if value.ndim <= 1 else None
    if depth > 32 or not tensor.inputs:
        return None
    node = tensor.inputs[0]
    return handler_for(node).eval_shape(node, lambda t: evaluate(t, depth + 1))


def analysis_ops() -> list[str]:
    """Default-domain op types whose handler has an analysis rule (each needs a test case)."""
    return sorted(op for (domain, op), h in HANDLERS.items() if domain == "" and h.analyzes)


def int_vector(value: Any) -> bool:
    """A scalar or a 1-D list of integers (axes, sizes, bounds). A malformed model may hold a
    matrix or floats there, which a handler must not index into or convert."""
    arr = np.asarray(value)
    return arr.ndim <= 1 and (arr.size == 0 or np.issubdtype(arr.dtype, np.integer))


def axis_is_batch(node: gs.Node, attr: str, default: int | None) -> bool:
    """The batch-axis rule of an op along one axis attribute: mixing if that axis is 0 (or
    unknown)."""
    rank = rank_of(node.inputs[0])
    axis = node.attrs.get(attr, default)
    return rank is None or axis is None or norm_axis(int(axis), rank) == 0
