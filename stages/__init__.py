"""Pipeline stages: one stage a file, plain Python, no Ray import."""
