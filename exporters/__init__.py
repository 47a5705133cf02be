"""Exporters: models from training frameworks to ONNX (needs the optional ``torch`` extra)."""
