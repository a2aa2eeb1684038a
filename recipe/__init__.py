"""A clean, importable MNIST-style pipeline: data, a linear classifier and a fast training loop.

`recipe` knows nothing about checks or reports; `checks/` imports it, never the other way round.
"""
