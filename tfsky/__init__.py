"""tfsky: a TensorFlow/Keras toolkit for sky imagery.

Importing tfsky switches TensorFlow to Keras 2 (`tf-keras`) and tells
segmentation-models to use it. This must happen before anything imports
TensorFlow, which is why it is the only work done at import time. TensorFlow's
native log lines are silenced too (set ``TF_CPP_MIN_LOG_LEVEL=0`` to see them):
on a CPU-only machine every run would otherwise print CUDA-probe errors.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("SM_FRAMEWORK", "tf.keras")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"
