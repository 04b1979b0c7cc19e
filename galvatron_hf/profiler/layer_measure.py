"""Time and memory of one layer, re-run alone from the calls one forward of the reduced model captured.

``model_profiler.py`` builds the one-layer-per-stack model, captures each profiled module's calls and sweeps
micro-batch sizes and lengths; here each layer's calls run again by themselves: forward and backward timed
(median of repeats, plain and under ``torch.utils.checkpoint``), and the bytes autograd saves, the inputs a
checkpointed layer keeps and, on CUDA, the allocator's view (docs/profiler.md, "Model profile", steps 4-5).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from galvatron_hf.adapters.spec import LayerSpec
from galvatron_hf.profiler.model_schema import LayerMeasurement
from galvatron_hf.profiler.timing import DeviceTimer, QueueAhead, Repeats, synchronize


class ModelProfilerError(RuntimeError):
    """The model cannot be profiled as asked; the message names the fix."""


@dataclass
class CapturedCall:
    """One call of a profiled module: the module and its arguments (detached, grad flags restored)."""

    module: torch.nn.Module
    args: tuple
    kwargs: dict[str, Any]


def run_forward(layer: LayerSpec, calls: list[CapturedCall], checkpointed: bool) -> list[torch.Tensor]:
    """Run the layer's calls; return the tensors to start backward from (the head adds HF's fp32 loss)."""
    outputs: list[torch.Tensor] = []
    for call in calls:
        if checkpointed:
            out = checkpoint(call.module, *call.args, use_reentrant=False, **call.kwargs)
        else:
            out = call.module(*call.args, **call.kwargs)
        tensors = [t for t in _tensors(out) if t.requires_grad and t.is_floating_point()]
        if layer.kind == "head" and tensors and tensors[0].dim() > 0:  # a fused head returns its loss
            logits = tensors[0]
            labels = torch.randint(0, logits.shape[-1], logits.shape[:-1], device=logits.device)
            tensors = [F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1))]
        outputs.extend(tensors)
    return outputs


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if hasattr(value, "to_tuple"):  # HF ModelOutput
        return _tensors(value.to_tuple())
    return []


def run_backward(outputs: list[torch.Tensor]) -> None:
    if not outputs:
        return
    grads = [torch.ones_like(t) if t.dim() == 0 else torch.randn_like(t) for t in outputs]
    torch.autograd.backward(outputs, grads)


def _timed(device: torch.device, work: Callable[[], Any], queue: QueueAhead, region: str) -> tuple[float, Any]:
    synchronize(device)
    host_start = queue.before(region)
    timer = DeviceTimer(device)
    timer.start()
    result = work()
    queue.after(region, host_start)
    return timer.stop(), result


def _time_pass(
    layer: LayerSpec, calls: list[CapturedCall], device: torch.device, checkpointed: bool, queue: QueueAhead
) -> tuple[float, float]:
    """(forward seconds, backward seconds) of one run."""
    tag = f"{layer.name}:{'ckpt' if checkpointed else 'plain'}"
    forward_s, outputs = _timed(device, lambda: run_forward(layer, calls, checkpointed), queue, tag + ":forward")
    backward_s, _ = _timed(device, lambda: run_backward(outputs), queue, tag + ":backward")
    return forward_s, backward_s


def _median_pass(layer, calls, device, checkpointed: bool, repeats: Repeats, queue: QueueAhead):
    for _ in range(repeats.warmup):
        _time_pass(layer, calls, device, checkpointed, queue)
    runs = [_time_pass(layer, calls, device, checkpointed, queue) for _ in range(max(repeats.repeats, 1))]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def measure_layer(
    layer: LayerSpec,
    calls: list[CapturedCall],
    micro_batch: int,
    layer_seq: int,
    kv_seq: int,
    device: torch.device,
    repeats: Repeats,
    queue_ahead: bool = True,
) -> LayerMeasurement:
    """Time and measure one layer at one point. ``queue_ahead`` times GPU work as training sees it (see
    :class:`~galvatron_hf.profiler.timing.QueueAhead`); ``False`` gives the synchronised, launch-bound times."""
    if not calls:
        raise ModelProfilerError(f"layer {layer.name} was never called during the forward pass; cannot time it")
    queue = QueueAhead(device, queue_ahead)
    forward_s, backward_s = _median_pass(layer, calls, device, False, repeats, queue)
    ckpt_forward_s, ckpt_backward_s = _median_pass(layer, calls, device, True, repeats, queue)
    saved, held, peak = measure_memory(layer, calls, device)
    ckpt_held = ckpt_peak = None
    if device.type == "cuda":  # CPU has no allocator statistics: nothing more to learn
        _, ckpt_held, ckpt_peak = measure_memory(layer, calls, device, checkpointed=True)
    return LayerMeasurement(
        micro_batch_size=micro_batch,
        seq_len=layer_seq,
        kv_seq_len=kv_seq,
        forward_s=forward_s,
        backward_s=backward_s,
        checkpointed_forward_s=ckpt_forward_s,
        checkpointed_backward_s=ckpt_backward_s,
        saved_activation_bytes=saved,
        checkpointed_saved_bytes=0 if layer.kind == "embedding" else checkpointed_input_bytes(calls),
        forward_held_bytes=held,
        backward_peak_bytes=peak,
        checkpointed_forward_held_bytes=ckpt_held,
        checkpointed_backward_peak_bytes=ckpt_peak,
    )


def measure_memory(
    layer: LayerSpec, calls: list[CapturedCall], device: torch.device, checkpointed: bool = False
) -> tuple[int, int | None, int | None]:
    """(bytes autograd saves, CUDA bytes held after forward, CUDA backward peak above its start).

    Parameters are not activations, and neither are the layer's side inputs (masks, rotary tables, T5's
    encoder states): in the whole model every layer shares one copy of those, counted where it is made.
    Under checkpointing the saved bytes are what the checkpoint keeps outside its region (its own hooks
    take the tensors saved inside), and the backward peak includes the recomputed activations.
    """
    parameters = {p.untyped_storage().data_ptr() for call in calls for p in call.module.parameters()}
    not_activations = parameters | {t.untyped_storage().data_ptr() for call in calls for t in _side_inputs(call)}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in not_activations:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    cuda = device.type == "cuda"
    synchronize(device)
    before = torch.cuda.memory_allocated(device) if cuda else 0
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        outputs = run_forward(layer, calls, checkpointed=checkpointed)
    held = peak = None
    if cuda:
        synchronize(device)
        start = torch.cuda.memory_allocated(device)
        held = start - before
        torch.cuda.reset_peak_memory_stats(device)
        run_backward(outputs)
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - start
    return sum(storages.values()), held, peak


def _inputs(call: CapturedCall) -> list[torch.Tensor]:
    return _tensors(list(call.args) + list(call.kwargs.values()))


def _main_input(call: CapturedCall) -> torch.Tensor | None:
    """The tensor the layer transforms: HF passes it first (hidden states to a block, token ids to an embedding)."""
    inputs = _inputs(call)
    return inputs[0] if inputs else None


def _side_inputs(call: CapturedCall) -> list[torch.Tensor]:
    main = _main_input(call)
    return [
        t for t in _inputs(call) if main is None or t.untyped_storage().data_ptr() != main.untyped_storage().data_ptr()
    ]


def checkpointed_input_bytes(calls: list[CapturedCall]) -> int:
    """What a checkpointed layer keeps: its main input, when it carries gradients (the hidden states).

    Side inputs (T5's encoder states for cross-attention, masks) are shared by every block and kept once by
    the model, not per layer. The embedding is left out by the caller: its input is token ids.
    """
    storages: dict[int, int] = {}
    for call in calls:
        main = _main_input(call)
        if main is not None and main.requires_grad:
            storage = main.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())
