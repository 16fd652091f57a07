"""Video-XL: a Qwen2-compatible decoder with VST memory, its trainer and its validation.

Importing this package does not import torch; `config` needs only pydantic.
"""
