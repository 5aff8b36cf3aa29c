"""Input and output that every room shares: atomic writes and strict JSON, the one safe YAML loader,
safe ids and output paths, and locks on output folders."""
