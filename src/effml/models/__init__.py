"""Classification families and backbones as tables, the one builder, networks and weights.

The catalogue of names and ``create_model`` are in ``effml.zoo`` (it imports this package, never
the reverse).
"""

from effml.models.ensemble import Ensemble
from effml.models.network import EfficientNet, EfficientNetFeatures

__all__ = ["EfficientNet", "EfficientNetFeatures", "Ensemble"]
