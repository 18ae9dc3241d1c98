"""The op-handler registry: one handler per ONNX op type (tinygrad-style table).

A handler says, for one op type, how channel ids flow from inputs to outputs
(`analyze`) and how the node's members are rewritten once units are removed
(`rewrite`). Ops without a handler, and ops in custom domains, are barriers.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import onnx_graphsurgeon as gs

if TYPE_CHECKING:  # pragma: no cover
    from ..analyze import AnalysisContext
    from ..rewrite import RewriteContext


class Handler:
    """Base: a barrier. Subclasses override what they understand."""

    reason = "is not supported by the analysis"

    def analyze(self, node: gs.Node, ctx: "AnalysisContext") -> None:
        ctx.pin_inputs(node, f"{node.op} {self.reason}")

    def rewrite(self, node: gs.Node, rw: "RewriteContext") -> None:
        """Default: nothing to rewrite (pass-through ops and barriers)."""


class Barrier(Handler):
    def __init__(self, reason: str) -> None:
        self.reason = reason


HANDLERS: dict[str, Handler] = {}
_DEFAULT = Handler()
_CUSTOM = Barrier("is in a custom domain the analysis does not know")


def register(*op_types: str) -> Callable[[type[Handler]], type[Handler]]:
    def deco(cls: type[Handler]) -> type[Handler]:
        instance = cls()
        for op in op_types:
            assert op not in HANDLERS, f"two handlers for {op}"
            HANDLERS[op] = instance
        return cls
    return deco


def register_barrier(reason: str, *op_types: str) -> None:
    for op in op_types:
        HANDLERS[op] = Barrier(reason)


def int_vector(value: Any) -> bool:
    """A scalar or a 1-D list of integers (axes, sizes, bounds). A malformed model may hold a
    matrix or floats there, which a handler must not index into or convert."""
    arr = np.asarray(value)
    return arr.ndim <= 1 and (arr.size == 0 or np.issubdtype(arr.dtype, np.integer))


def handler_for(node: gs.Node) -> Handler:
    if node.domain not in ("", "ai.onnx", None):
        return _CUSTOM
    return HANDLERS.get(node.op, _DEFAULT)
