"""Metrics: exact distances for toy data; Frechet distances through torch-fidelity for images."""

from .toy import TOY_METRICS, energy_distance, sliced_w2

__all__ = ["TOY_METRICS", "energy_distance", "sliced_w2"]
