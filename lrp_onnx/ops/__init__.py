"""Relevance handlers, one module per op family; importing this package fills the registry."""
from . import arithmetic, elementwise, linear, merge, normalization, pooling, reduce, shape, slicing  # noqa: F401  (registration side effect)
from .registry import HANDLERS, LAYER_FAMILIES, UNCOUNTED_RULE_FAMILIES, data_slots, handler_for, supported_ops

__all__ = ["HANDLERS", "LAYER_FAMILIES", "UNCOUNTED_RULE_FAMILIES", "data_slots", "handler_for", "supported_ops"]
