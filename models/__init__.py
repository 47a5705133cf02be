"""The shipped models and their training script (``python -m models.train``); see README.md."""
