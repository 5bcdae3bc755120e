"""Harnesses that produce ``data/benchmarks/``: :mod:`.bench` (strategies x policies, a masked LM),
:mod:`.amp_matrix` (the mixed-precision tasks), :mod:`.results` (their JSON, read and written).

Experiments call the mechanisms (strategies, collators, precision, train); nothing in the
mechanisms imports from here.
"""
