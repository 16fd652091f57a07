"""Video-XL: a Qwen2-compatible decoder with VST memory, its trainer and its validation.

Importing this package does not import torch; `config` needs only pydantic.
It imports only the low layers (samples, errors); never a stage, an engine or the run.
"""
