"""vico: long-video instruction data (VICO) on Ray, and the Video-XL model that learns from it.

The package's modules sit in layers (docs/design.md "Layers", checked by lint-imports): each may
import only from its own layer or those below it; `errors` and `text` import nothing of the project.
"""

__version__ = "0.1.0"
