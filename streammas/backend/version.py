"""The project's version, where every layer may read it (the service's checkpoints and build_info metric).

>>> __version__.count(".") >= 2
True
"""

__version__ = "0.1.0"
