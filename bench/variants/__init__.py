"""Benchmark variants: each module here registers builders with `bench.common.register_variant`.

Adding a variant is adding a file: the runner imports every module of this package (and of bench/peers).
"""
