"""Deployment: from scores to the model that ships: selection, the guarded choice among
candidates (plain removal, mean compensation, least-squares refit), cleanup, verification
and latency."""
