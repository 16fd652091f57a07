"""Pipeline stages: one stage a file, plain Python, no Ray import.

A stage module imports `stages.common` and the helpers below it (base, cues, context, ffmpeg,
manifest), engines, and the low layers (config, storage, layout, errors, text); never another
stage's module, never Ray, never the run or the CLI.
"""
