"""The errors lrp_onnx raises; each message names the problem and the place."""


class LRPError(Exception):
    """Base class of lrp_onnx's errors."""


class ModelError(LRPError, ValueError):
    """The model file or proto cannot be read, is invalid, or has an unsupported structure."""


class UnsupportedOpError(ModelError):
    """A node on the relevance path has an op type without a relevance handler."""


class CompositeError(LRPError, ValueError):
    """A composite or preset is unknown, malformed, or does not cover a layer."""


class InputError(LRPError, ValueError):
    """The input to explain (or the target) has the wrong shape, dtype or values."""
