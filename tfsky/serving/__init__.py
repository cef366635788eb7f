"""Serving: the TF Serving client (`Client`) and the development server (`DevServer`, ``tfsky serve``)."""

from tfsky.serving.client import Client, ImagePrediction, ServingRequestError
from tfsky.serving.server import DevServer

__all__ = ["Client", "DevServer", "ImagePrediction", "ServingRequestError"]
