"""mscluster: train image classifiers with MindSpore across a cluster (the ``mscluster`` command)."""
__version__ = "0.1.0"
