"""Harnesses that produce ``data/benchmarks/``: :mod:`.bench` (strategies x policies, a masked LM),
:mod:`.amp_matrix` (the mixed-precision tasks),
:mod:`.inference` (those tasks' models under each inference precision: accuracy against fp32, speed), :mod:`.results` (their JSON, read and written),
:mod:`.equivalence` (chapter 04's proofs: packed texts equal the texts alone; gradient accumulation
over packs equals one batch when the loss is divided by the step's count).

Experiments call the mechanisms (strategies, collators, precision, train); nothing in the
mechanisms imports from here.
"""
