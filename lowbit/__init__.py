"""lowbit: make trained PyTorch models low-bit, and prove what it cost."""

__version__ = "0.1.0"
