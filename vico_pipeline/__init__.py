"""vico: long-video instruction data (VICO) on Ray, and the Video-XL model that learns from it."""

__version__ = "0.1.0"
