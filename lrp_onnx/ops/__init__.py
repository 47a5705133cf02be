"""Relevance handlers, one module per op family; importing this package fills the registry."""
from . import (arithmetic, bilinear, elementwise, gather, linear, merge, normalization, pooling, reduce, shape,  # noqa: F401
               slicing, softmax)  # (registration side effect)
from . import conv_transpose, global_max, rearrange, resize  # noqa: F401,E402  (new layer and shape handlers)
from .families import family_of
from .registry import (HANDLERS, LAYER_FAMILIES, UNCOUNTED_RULE_FAMILIES, data_slots, handler_for, has_handler, op_key,
                       supported_ops)

__all__ = ["HANDLERS", "LAYER_FAMILIES", "UNCOUNTED_RULE_FAMILIES", "data_slots", "family_of", "handler_for",
           "has_handler", "op_key", "supported_ops"]
