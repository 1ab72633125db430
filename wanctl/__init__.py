"""wanctl: safe, fast and boring multi-GPU video generation with Wan2.2."""

__version__ = "0.1.0"
