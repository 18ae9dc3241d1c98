"""Helpers of bench/real_models.py: PIL renderers and the real-model specs."""
