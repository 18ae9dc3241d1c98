"""Scoring: rank the units of each group. The engine evaluates coalitions with ONNX Runtime
(cached prefixes, suffix runs); estimators turn coalition values into Shapley values; the
`METRICS` table holds every ranking metric behind one signature."""
