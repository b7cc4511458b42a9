"""Benchmarks of the Ray pipelines (``crfgan bench ...``): each module prints a table with ratios."""
