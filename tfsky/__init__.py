"""tfsky: a TensorFlow/Keras toolkit for sky imagery.

Importing tfsky switches TensorFlow to Keras 2 (`tf-keras`) and tells
segmentation-models to use it. This must happen before anything imports
TensorFlow, which is why it is the only work done at import time. TensorFlow's
native log lines are silenced too (set ``TF_CPP_MIN_LOG_LEVEL=0`` to see them):
on a CPU-only machine every run would otherwise print CUDA-probe errors.

NumPy's hint that its large arrays use transparent huge pages is turned off
(``NUMPY_MADVISE_HUGEPAGE=0`` unless set): where the kernel's THP ``defrag``
is ``madvise`` (the kernel's default since 4.6) each fresh hinted allocation
may stall on memory compaction (numpy/numpy#31590). Measured on this 2-core
VM (``scripts/bench_alloc.py``): touching a fresh 134 MB array (one 8K float32
accumulator) takes 1.35-1.50 s with the hint and 0.14-0.46 s without, and an 8K
prediction spends 1.28 s outside the model with it and 0.29 s without.
"""

import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("SM_FRAMEWORK", "tf.keras")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")
if "numpy" in sys.modules:  # imported before tfsky (e.g. by Ray's worker): it has read the variable already
    sys.modules["numpy"]._core.multiarray._set_madvise_hugepage(os.environ["NUMPY_MADVISE_HUGEPAGE"] != "0")

__version__ = "0.1.0"
