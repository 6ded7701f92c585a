"""The fused products, one folder each: ``reference.py`` (the plain PyTorch formula that tests and benchmarks
compare against), ``cpu.py`` (numba kernels), ``triton.py`` (Triton kernels and their launcher) and
``__init__.py`` (the autograd functions and the dispatch between them).

- :mod:`.spline_linear`: a B-spline KAN layer's product, basis expansion then one matrix product.
- :mod:`.lut_linear`: the same with the basis read from a low-bit lookup table, in integer products.
"""
