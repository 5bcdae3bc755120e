"""Plot functions: data in, matplotlib Figure out; one module per chapter, one palette.

Nothing here computes waste, speed-ups, packs, rounds or trains: callers pass in what
:mod:`padlab.waste`, :mod:`padlab.cost`, :mod:`padlab.packing`, :mod:`padlab.floats`, the experiments'
result readers etc. computed. Each function returns a ``matplotlib.figure.Figure`` so that notebooks,
widgets and the CLI can show or save it. Colours come from :mod:`padlab.viz.style`.

Modules: ``memory`` (chapter 00), ``padding`` (01-02), ``bucketing`` (03), ``packing`` (04),
``floats`` (05), ``precision`` (06), ``bench`` (07), ``schematics`` (the picture of each trick drawn
before its code: batch layouts and masks for 01-04, autocast's data flow for 06), ``style`` (the palette). Every public plot
function is re-exported here, so ``from padlab import viz; viz.pack_bars(...)`` works.
"""
from __future__ import annotations

from . import bench, bucketing, floats, memory, packing, padding, precision, schematics, style
from .bench import (anomaly_cold_warm, bench_speedup_bars, bench_summary, kernel_time_stacks,
                    loss_curves_per_example, profile_families, speedup_bars, throughput_vs_budget)
from .bucketing import accuracy_by_seed, bucketing_tradeoff, ddp_assignment, loss_by_step, token_budget_batches
from .floats import bit_layout, float_bits, format_ranges, precision_vs_magnitude, value_density
from .memory import cost_vs_length, memory_vs_length, parameter_memory_bars
from .packing import (attention_mask_panels, max_difference_bars, pack_bars, packing_efficiency_vs_capacity,
                      strategy_efficiency_bars)
from .padding import (length_histogram, mask_heatmap, padded_length_distribution, waste_vs_batch_size,
                      waste_vs_max_length)
from .precision import (amp_speedup_vs_tokens, autocast_dtype_grid, gradient_histogram, inference_speedup_vs_batch,
                        loss_scale_dynamics, memory_budget_bars, policy_curves, policy_result_bars,
                        policy_speed_memory)
from .schematics import (FLOW_COLOURS, NO_SLOT_COLOUR, autocast_flow, batch_shape_schematic, layout_schematic,
                         row_mask_colours, slot_colours)
from .style import (FIELD_COLOURS, FORMAT_COLOURS, POLICY_COLOURS, SEQUENCE_COLOURS, STRATEGY_COLOURS,
                    colours_for, new_figure)

#: The chapter modules, in chapter order (each lists its plot functions in ``__all__``).
CHAPTERS = (memory, padding, bucketing, packing, floats, precision, bench)

__all__ = ["CHAPTERS", "style", "schematics", "FIELD_COLOURS", "FORMAT_COLOURS", "POLICY_COLOURS", "SEQUENCE_COLOURS",
           "STRATEGY_COLOURS", "colours_for", "new_figure", "parameter_memory_bars", "memory_vs_length",
           "cost_vs_length", "length_histogram", "waste_vs_max_length", "mask_heatmap", "waste_vs_batch_size",
           "padded_length_distribution", "bucketing_tradeoff", "loss_by_step", "accuracy_by_seed",
           "token_budget_batches", "ddp_assignment", "pack_bars", "packing_efficiency_vs_capacity",
           "attention_mask_panels", "max_difference_bars", "strategy_efficiency_bars", "bit_layout", "float_bits",
           "value_density", "precision_vs_magnitude", "format_ranges", "autocast_dtype_grid", "gradient_histogram",
           "loss_scale_dynamics", "policy_curves", "policy_result_bars", "policy_speed_memory",
           "inference_speedup_vs_batch", "memory_budget_bars", "amp_speedup_vs_tokens",
           "bench_speedup_bars", "bench_summary", "speedup_bars", "loss_curves_per_example", "anomaly_cold_warm",
           "profile_families", "kernel_time_stacks", "throughput_vs_budget", "NO_SLOT_COLOUR", "FLOW_COLOURS", "layout_schematic",
           "slot_colours", "row_mask_colours", "autocast_flow", "batch_shape_schematic"]
