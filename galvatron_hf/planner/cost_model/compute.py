"""Compute, the pluggable part: a layer's forward/backward time and activation bytes.

:class:`LayerCostSource` is what the search asks; :class:`AnalyticCompute` answers from FLOPs and the
hardware's matmul rate, a profiled source (``planner/profiled_costs.py``) from measurements.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from galvatron_hf.planner.cost_model.units import Precision

if TYPE_CHECKING:
    from galvatron_hf.adapters.spec import LayerSpec
    from galvatron_hf.profiler.hardware_schema import HardwareProfile


@runtime_checkable
class LayerCostSource(Protocol):
    """Where the search gets a layer's compute time and activation memory.

    ``samples`` is the number of samples one rank processes in one micro-batch (micro-batch / dp); ``tp``
    the TP degree the layer runs with. Times are seconds on one device, activation bytes what that rank
    keeps for backward. ``source`` ends up in ``Predicted.source`` ("analytic", "profiled").
    """

    source: str

    def forward_time_s(self, layer: LayerSpec, samples: float, tp: int) -> float: ...

    def backward_time_s(self, layer: LayerSpec, samples: float, tp: int) -> float: ...

    def activation_bytes(self, layer: LayerSpec, samples: float, tp: int, checkpoint: bool) -> float: ...


# Share of the large-matmul rate a whole HF layer reaches (norms, rotary, softmax, element-wise ops and
# kernel launches around the matmuls). Measured on one H100 (torch 2.11, HF Llama-1B block, seq 2048, bf16,
# sdpa; benchmarks/profiles/h100/truth-report.txt): forward + backward took 8.72 ms where FLOPs at the
# measured 774.7 TFLOP/s matmul rate give 4.39 ms (0.50); the LM head 0.47. Larger layers do a little better.
LAYER_EFFICIENCY = 0.5


@dataclass(frozen=True)
class AnalyticCompute:
    """Compute from FLOPs: ``forward_flops x samples / tp / (matmul rate x layer_efficiency)``.

    ``matmul_tflops`` of the hardware profile is the rate large matmuls reach (what the profiler measures);
    ``layer_efficiency`` folds in the non-matmul work of a real layer (see ``LAYER_EFFICIENCY``). The
    backward is ``backward_factor`` (2: input and weight gradients) times the forward. Activation bytes come
    from the spec's :class:`ActivationModel`.
    """

    hardware: HardwareProfile
    mixed_precision: str = "bf16"
    attn_impl: str = "sdpa"
    backward_factor: float = 2.0
    layer_efficiency: float = LAYER_EFFICIENCY
    source: str = "analytic"

    def forward_time_s(self, layer: LayerSpec, samples: float, tp: int) -> float:
        rate = self.hardware.matmul_flops_per_s(self.mixed_precision) * self.layer_efficiency
        return layer.forward_flops * samples / tp / rate

    def backward_time_s(self, layer: LayerSpec, samples: float, tp: int) -> float:
        return self.backward_factor * self.forward_time_s(layer, samples, tp)

    def activation_bytes(self, layer: LayerSpec, samples: float, tp: int, checkpoint: bool) -> float:
        dtype_bytes = Precision.of(self.mixed_precision).compute_bytes
        # per micro-batch, not samples x per-sample: some tensors are kept once per micro-batch (T5's bias)
        return layer.activation_bytes(tp, dtype_bytes, checkpoint, self.attn_impl, samples=samples)
