"""Cost model and search: ModelSpec + hardware -> Plan. Pure Python: never imports torch.distributed.

Public API (imported lazily, so ``galvatron_hf.planner.plan`` stays cheap for the runtime)::

    from galvatron_hf.planner import search_plan, uniform_plan, estimate_plan, ImpossibleBudgetError

See docs/search.md (search), docs/cost_model.md (formulas) and docs/plan_format.md (the plan file).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Plan": "plan",
    "LayerStrategy": "plan",
    "VocabStrategy": "plan",
    "Predicted": "plan",
    "PlanError": "plan",
    "CostModel": "cost_model",
    "CostReport": "cost_model",
    "StageCost": "cost_model",
    "StepShape": "cost_model",
    "LayerCost": "cost_model",
    "LayerCostSource": "cost_model",
    "AnalyticCompute": "cost_model",
    "estimate_plan": "cost_model",
    "search_plan": "search",
    "uniform_plan": "uniform",
    "SearchProblem": "search",
    "SearchResult": "search",
    "SearchStats": "search",
    "Evaluated": "search",
    "ImpossibleBudgetError": "search",
    "default_memory_gb": "search",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'galvatron_hf.planner' has no attribute {name!r}")
    return getattr(import_module(f"galvatron_hf.planner.{module}"), name)
