"""Analysis of depth: compute, latency, residual expansion, norm growth, Pareto frontiers.

- :mod:`.macs`: multiply-adds and FLOPs (both conventions by name), parameter counts;
- :mod:`.latency`: warm-up + median timing harness, CPU and CUDA;
- :mod:`.expansion`: residual expansion (Dherin & Munn 2025) and output-norm growth;
- :mod:`.gates`: exact gradient moments over gate settings (gated depth, Lemma 5.3);
- :mod:`.pareto`: accuracy-against-cost frontiers over configurations and exit thresholds.
"""

from .expansion import (
    branch_scale,
    expected_norm_growth,
    level_terms,
    norm_growth,
    residual_paths,
    residual_stack,
    second_order_expansion,
)
from .gates import GateMoments, gate_gradient_moments
from .latency import LatencyResult, latency_table, measure_latency
from .macs import MacCount, count_macs, count_parameters
from .pareto import (
    ParetoPoint,
    configuration_sweep,
    early_exit_sweep,
    pareto_frontier,
    plot_pareto,
)

__all__ = [
    "MacCount", "count_macs", "count_parameters",
    "LatencyResult", "measure_latency", "latency_table",
    "residual_paths", "level_terms", "residual_stack", "second_order_expansion",
    "branch_scale", "norm_growth", "expected_norm_growth",
    "GateMoments", "gate_gradient_moments",
    "ParetoPoint", "pareto_frontier", "configuration_sweep", "early_exit_sweep", "plot_pareto",
]
