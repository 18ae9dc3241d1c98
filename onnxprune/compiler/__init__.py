"""The channel-group compiler: normalize a graph, find the channel groups coupled across
layers (one handler per ONNX op in `ops/`), add mask inputs, and rewrite the graph with
units removed. Pure graph work: no ONNX Runtime session outside the shape probes."""
