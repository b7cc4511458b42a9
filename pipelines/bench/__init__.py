"""Benchmarks shipped with the product: ``crfgan bench <name>`` prints a table, ``--json`` writes the figures."""
