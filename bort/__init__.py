"""Bort: the optimal BERT subarchitecture, in MXNet/Gluon.

Importing this package sets OMP_NUM_THREADS to the cores this process may use when it is not set
already. MXNet reads it once, at import, and left to itself ran Bort at half speed on 2-core hosts,
so `import bort` must come before `import mxnet` in entry points.
"""
from bort.runtime import configure_threads

configure_threads()

__version__ = "0.1.0"
