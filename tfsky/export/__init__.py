"""Export trained models as TF Serving SavedModel versions (``tfsky export``)."""

from tfsky.export.metadata import export_info
from tfsky.export.savedmodel import export_model

__all__ = ["export_info", "export_model"]
