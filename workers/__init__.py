"""Everything that touches tensors: merges, runtime validation, training, Hub I/O.

Imports registry, never the reverse (the local executor imports workers lazily).
"""
