"""The analysis types: what the dependency compiler (`analyze`) produces and every later
stage reads. Nodes are named everywhere by one key, `graph.node_key` (the name of the
node's first output, SSA-unique), never by `node.name` (optional, possibly empty)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from .channels import ChannelMap
from .graph import node_key


@dataclass
class Member:
    """One place a group touches: a weight or constant slice, a shape constant, an attribute."""

    role: str        # producer | consumer | param | shape | attr | cache (a graph input/output)
    node: str        # node_key of the node that owns it
    op: str
    tensor: str
    axis: int
    ids: np.ndarray = field(repr=False)
    name: str = ""   # the node's own name, for people (reports, --exclude); may be empty

    def to_json(self) -> dict:
        return {"role": self.role, "node": self.name or self.node, "op": self.op,
                "tensor": self.tensor, "axis": self.axis}


@dataclass
class MaskSite:
    """A consumer input that mixes channels: masking here equals removing (docs/design.md)."""

    node: str        # node_key of the consumer
    input_index: int
    tensor: str
    axis: int
    ids: np.ndarray = field(repr=False)
    rank: int = 0    # rank of the consumer's input (the mask is reshaped to it)


@dataclass
class Group:
    id: int
    units: int
    unit_size: int
    prunable: bool
    reason: str | None
    members: list[Member]
    sources: list[str]   # names of the tensors whose channels start this group

    def to_json(self) -> dict:
        return {"id": self.id, "units": self.units, "unit_size": self.unit_size,
                "prunable": self.prunable, "reason": self.reason,
                "sources": self.sources, "members": [m.to_json() for m in self.members]}


@dataclass
class Analysis:
    """The result of the dependency compiler, consumed by instrument and rewrite."""

    graph: gs.Graph
    maps: dict[str, ChannelMap]
    groups: list[Group]
    sites: list[MaskSite]
    ch_group: np.ndarray        # global channel id -> group id
    ch_unit: np.ndarray         # global channel id -> unit index within its group
    notes: dict[str, Any]       # node_key -> what its handler needs at rewrite time
    batch_mixing: list[str] = field(default_factory=list)  # ops that combine samples after a mask
    prune_cache: bool = False  # analysed with --prune-cache: heads may shrink the key-value cache I/O
    measured: dict[str, tuple[int, ...]] = field(default_factory=dict)  # node_key -> its size
    # tensor's shape on a calibration sample, where the export left it dynamic (cost.py)
    _nodes: dict[str, gs.Node] | None = field(default=None, init=False, repr=False)

    @property
    def prunable(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    def group(self, gid: int) -> Group:
        return self.groups[gid]

    def node(self, key: str) -> gs.Node:
        """The node of `graph` with this node_key (the key of members and mask sites)."""
        if self._nodes is None:  # built once: the analysed graph is never modified
            self._nodes = {node_key(n): n for n in self.graph.nodes}
        return self._nodes[key]

    def unit_ids(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(group id, unit index) of each global channel id."""
        return self.ch_group[ids], self.ch_unit[ids]
