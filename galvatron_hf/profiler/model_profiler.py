"""`galvatron-hf profile model`: time and memory of one layer of each kind, on one device.

How (no model code is copied and nothing is family-specific):

1. the adapter's :class:`ModelSpec` says which layer kinds the model has and where their modules live;
2. the HF model is built from its config with one layer per stack (random weights, on the target device,
   in the chosen dtype and attention implementation);
3. one forward pass of that small model records, with forward pre-hooks, the exact arguments every profiled
   module receives (hidden states, rotary embeddings, masks...), detached;
4. each layer is then re-run alone from those arguments: forward, backward (random output gradient; the
   head also runs the loss as HF does, in fp32), and both again under ``torch.utils.checkpoint`` (whose
   backward includes the recomputation). Device timers, warm-up, median of repeats;
5. memory: the tensors autograd saves for backward (``saved_tensors_hooks``, parameters excluded), the
   inputs a checkpointed layer keeps, and on CUDA the allocator's view (held after forward, backward peak);
6. over the sweep of micro-batch sizes and sequence lengths, time is fitted against tokens plus an
   attention term (batch x seq x kv_seq) for blocks.

Steps 4 and 5 (one layer at one point) live in ``layer_measure.py``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from galvatron_hf.adapters.spec import BLOCK_KINDS, LayerSpec, ModelSpec, module_path
from galvatron_hf.constants import MIXED_PRECISIONS, torch_dtype
from galvatron_hf.profiler.fitting import fit_tokens
from galvatron_hf.profiler.layer_measure import (
    CapturedCall,
    ModelProfilerError,
    measure_layer,
    run_backward,
    run_forward,
)
from galvatron_hf.profiler.model_schema import (
    LayerMeasurement,
    LayerProfile,
    ModelProfile,
    ProfileKey,
    config_hash,
)
from galvatron_hf.profiler.timing import Progress, Repeats, synchronize

LAYER_COUNT_FIELDS = ("num_hidden_layers", "num_layers", "num_decoder_layers", "n_layer")


@dataclass(frozen=True)
class ModelProfileOptions:
    """The sweep: every micro-batch size at every sequence length (``seq_lens`` defaults to S/2 and S)."""

    seq_len: int
    micro_batch_sizes: tuple[int, ...] = (1, 2, 4)
    seq_lens: tuple[int, ...] = ()
    dtype: str = "bf16"
    attn_implementation: str = "sdpa"
    repeats: Repeats = field(default_factory=lambda: Repeats(warmup=2, repeats=5))
    device: str = ""  # "" -> cuda when available, else cpu
    progress: bool = True
    queue_ahead: bool = True  # time GPU work with the host ahead, as in training (timing.QueueAhead)
    # What training runs in place of HF's own modules, so the profile times that: ``kernels`` names it (it is
    # part of the profile's key), ``prepare`` patches / compiles the reduced model once it is built, and
    # ``head_loss(head, hidden, labels)`` is the training loss of a head that never materialises its logits
    # (then timed and measured in place of the head's matmul plus HF's fp32 cross-entropy).
    kernels: str = ""
    prepare: Callable[[torch.nn.Module], None] | None = field(default=None, compare=False, repr=False)
    head_loss: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = field(
        default=None, compare=False, repr=False
    )

    def sweep_seq_lens(self) -> tuple[int, ...]:
        if self.seq_lens:
            return tuple(sorted(set(self.seq_lens)))
        return tuple(sorted({max(self.seq_len // 2, 1), self.seq_len}))

    def torch_device(self) -> torch.device:
        if self.device:
            return torch.device(self.device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ----- entry point ---------------------------------------------------------------------------------------------
def profile_model(config: Any, spec: ModelSpec, options: ModelProfileOptions) -> ModelProfile:
    """Measure one layer of each kind of ``spec`` (built from ``config``) over the options' sweep."""
    device = options.torch_device()
    if options.dtype not in MIXED_PRECISIONS:
        raise ModelProfilerError(f"dtype {options.dtype!r} is not one of {sorted(MIXED_PRECISIONS)}")
    model = build_reduced_model(config, spec, options, device)
    layers = representative_layers(spec)
    points = sweep_points(spec, options)
    measurements = measure_sweep(model, spec, layers, points, options, device)
    profiles = summarise_layers(model, spec, layers, measurements)
    return ModelProfile(
        key=profile_key(config, spec, options, device),
        model_name=spec.name,
        architecture=spec.architecture,
        seq_len=spec.seq_len,
        micro_batch_sizes=sorted({b for b, _ in points}),
        seq_lens=sorted({s for _, s in points}),
        layers=profiles,
        timer=_timer_name(device, options),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        sources={
            "time": f"measured: median of {options.repeats.repeats} after {options.repeats.warmup} warm-up, fitted",
            "activation_bytes": "measured: tensors saved for backward (saved_tensors_hooks), parameters excluded",
            "backward_peak_bytes": "measured: CUDA allocator peak" if device.type == "cuda" else "not measured on CPU",
        },
    )


def measure_sweep(
    model: torch.nn.Module,
    spec: ModelSpec,
    layers: list[LayerSpec],
    points: list[tuple[int, int]],
    options: ModelProfileOptions,
    device: torch.device,
) -> dict[str, list[LayerMeasurement]]:
    """Every layer kind at every (micro-batch, seq) point; one progress line per point."""
    progress = Progress("profile model", len(points), options.progress)
    measurements: dict[str, list[LayerMeasurement]] = {layer.kind: [] for layer in layers}
    warm_up(model, spec, layers, points[0], device, options.head_loss)
    for micro_batch, seq in points:
        calls = capture_calls(model, spec, layers, micro_batch, seq, device, options.head_loss)
        for layer in layers:
            layer_seq, kv_seq = scaled_lengths(layer, spec, seq)
            point = measure_layer(
                layer, calls[layer.name], micro_batch, layer_seq, kv_seq, device, options.repeats, options.queue_ahead
            )
            measurements[layer.kind].append(point)
        progress.step(f"micro-batch {micro_batch}, seq {seq}: " + _summary(measurements))
        del calls  # frees the captured activations before the next, larger point
    return measurements


def summarise_layers(
    model: torch.nn.Module, spec: ModelSpec, layers: list[LayerSpec], measurements: dict[str, list[LayerMeasurement]]
) -> dict[str, LayerProfile]:
    """Fits and per-sample figures per kind; a tied weight counts once, for the first layer owning it (as the spec)."""
    profiles, counted = {}, set()
    for layer in layers:
        params = [p for m in modules_of(model, layer) for p in m.parameters() if id(p) not in counted]
        unique = list({id(p): p for p in params}.values())
        counted.update(id(p) for p in unique)
        profiles[layer.kind] = summarise_layer(layer, unique, measurements[layer.kind], spec)
    return profiles


def profile_key(config: Any, spec: ModelSpec, options: ModelProfileOptions, device: torch.device) -> ProfileKey:
    return ProfileKey(
        config_hash=config_hash(config.to_dict()),
        model_type=spec.model_type,
        dtype=options.dtype,
        device=device_label(device),
        attn_implementation=options.attn_implementation,
        library_versions=library_versions(),
        timing=_timer_name(device, options),
        kernels=options.kernels,
    )


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def library_versions() -> dict[str, str]:
    import transformers

    import galvatron_hf

    versions = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "galvatron_hf": galvatron_hf.__version__,
    }
    if torch.cuda.is_available():
        versions["cuda"] = str(torch.version.cuda)
    return versions


# ----- building the small model --------------------------------------------------------------------------------
def _timer_name(device: torch.device, options: ModelProfileOptions) -> str:
    if device.type != "cuda":
        return "perf_counter"
    return "cuda events, host queued ahead" if options.queue_ahead else "cuda events, synchronised"


def reduced_config(config: Any, attn_implementation: str) -> Any:
    """A copy of ``config`` with one layer per stack, no KV cache, and the requested attention kernel."""
    small = copy.deepcopy(config)
    for name in LAYER_COUNT_FIELDS:
        if name in small.to_dict() or hasattr(small, name):
            try:
                setattr(small, name, 1)
            except AttributeError:
                continue
    if getattr(small, "layer_types", None):
        small.layer_types = small.layer_types[:1]
    small.use_cache = False
    small._attn_implementation = attn_implementation
    return small


def build_reduced_model(
    config: Any, spec: ModelSpec, options: ModelProfileOptions, device: torch.device
) -> torch.nn.Module:
    import transformers

    model_class = getattr(transformers, spec.architecture, None)
    if model_class is None:
        raise ModelProfilerError(f"transformers {transformers.__version__} has no class {spec.architecture}")
    small = reduced_config(config, options.attn_implementation)
    with torch.device(device):
        try:
            model = model_class._from_config(
                small, attn_implementation=options.attn_implementation, dtype=torch_dtype(options.dtype)
            )
        except (ImportError, ValueError) as err:
            raise ModelProfilerError(
                f"cannot build {spec.architecture} with attn_implementation={options.attn_implementation!r}: "
                f"{err}. Choose --attn_implementation sdpa or eager."
            ) from err
    if options.prepare is not None:
        options.prepare(model)
    return model.train()


def representative_layers(spec: ModelSpec) -> list[LayerSpec]:
    """The first layer of each kind: it exists in the one-layer-per-stack model under the same path."""
    seen: dict[str, LayerSpec] = {}
    for layer in spec.layers:
        seen.setdefault(layer.kind, layer)
    return list(seen.values())


def module_paths(layer: LayerSpec) -> list[str]:
    """Modules to time: a block's root module (the whole block), else each module it owns.

    ``LayerSpec.modules`` are relative to ``root`` (GPT-2's embedding: root "transformer", modules
    "wte", "wpe", "drop").
    """
    if layer.is_block and layer.root:
        return [layer.root]
    return [module_path(layer.root, m) for m in layer.modules]


def modules_of(model: torch.nn.Module, layer: LayerSpec) -> list[torch.nn.Module]:
    modules = []
    for path in module_paths(layer):
        try:
            modules.append(model.get_submodule(path))
        except AttributeError as err:
            raise ModelProfilerError(
                f"layer {layer.name}: the model has no module {path!r}; the {layer.kind} layer spec and the HF "
                "class disagree (adapter bug)"
            ) from err
    return modules


# ----- inputs and the sweep ------------------------------------------------------------------------------------
def fixed_length(spec: ModelSpec) -> bool:
    """Models without a token vocabulary (ViT) take images: their length is fixed by the image size."""
    return spec.vocab_size == 0


def sweep_points(spec: ModelSpec, options: ModelProfileOptions) -> list[tuple[int, int]]:
    """(micro-batch, seq) pairs: every micro-batch size at every sweep length."""
    seqs = (spec.seq_len,) if fixed_length(spec) else options.sweep_seq_lens()
    return [(b, s) for s in seqs for b in sorted(set(options.micro_batch_sizes))]


def scaled_lengths(layer: LayerSpec, spec: ModelSpec, seq: int) -> tuple[int, int]:
    """This layer's tokens per sample and key length at sweep length ``seq`` (T5's decoder scales along)."""
    ratio = seq / spec.seq_len
    layer_seq = max(round((layer.seq_len or spec.seq_len) * ratio), 1)
    kv_seq = max(round(layer.kv_seq_len * ratio), 1) if layer.kv_seq_len else layer_seq
    return layer_seq, kv_seq


def dummy_inputs(model: torch.nn.Module, spec: ModelSpec, micro_batch: int, seq: int, device: torch.device) -> dict:
    """Random inputs of the shape training feeds: token ids (and decoder ids for T5) or pixel values."""
    config = model.config
    if model.main_input_name == "pixel_values":
        size = config.image_size
        dtype = next(model.parameters()).dtype
        return {"pixel_values": torch.randn(micro_batch, config.num_channels, size, size, device=device, dtype=dtype)}
    vocab = int(config.vocab_size)
    inputs = {"input_ids": torch.randint(0, vocab, (micro_batch, seq), device=device)}
    if getattr(config, "is_encoder_decoder", False):
        decoder_seq = max(round((spec.decoder_seq_len or spec.seq_len) * seq / spec.seq_len), 1)
        inputs["decoder_input_ids"] = torch.randint(0, vocab, (micro_batch, decoder_seq), device=device)
    return inputs


def capture_calls(
    model: torch.nn.Module,
    spec: ModelSpec,
    layers: list[LayerSpec],
    micro_batch: int,
    seq: int,
    device: torch.device,
    head_loss: Callable | None = None,
) -> dict[str, list[CapturedCall]]:
    """Run the small model once and keep what every profiled module was called with (the head's call as its
    fused loss when ``head_loss`` is given)."""
    captured: dict[str, list[CapturedCall]] = {layer.name: [] for layer in layers}
    handles = []
    for layer in layers:
        for module in modules_of(model, layer):

            def hook(module, args, kwargs, _name=layer.name):
                captured[_name].append(CapturedCall(module, _detach(args), _detach(kwargs)))

            handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        model(**dummy_inputs(model, spec, micro_batch, seq, device))
    finally:
        for handle in handles:
            handle.remove()
    if head_loss is not None:
        for layer in layers:
            if layer.kind == "head":
                captured[layer.name] = [_fused_head_call(call, head_loss) for call in captured[layer.name]]
    return captured


class FusedHeadLoss(torch.nn.Module):
    """A head and its loss as one module (``head_loss(head, hidden, labels)``): the call the profiler times for
    a head whose training loss never materialises the logits."""

    def __init__(self, head: torch.nn.Module, head_loss: Callable) -> None:
        super().__init__()
        self.head = head
        self.head_loss = head_loss

    def forward(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.head_loss(self.head, hidden, labels)


def _fused_head_call(call: CapturedCall, head_loss: Callable) -> CapturedCall:
    hidden = call.args[0] if call.args else next(iter(call.kwargs.values()))
    vocab = call.module.weight.shape[0]
    labels = torch.randint(0, vocab, hidden.shape[:-1], device=hidden.device)
    return CapturedCall(FusedHeadLoss(call.module, head_loss), (hidden, labels), {})


def _detach(value: Any) -> Any:
    """Cut captured tensors from the capture pass's graph, keeping which of them needed gradients."""
    if isinstance(value, torch.Tensor):
        return value.detach().requires_grad_(value.requires_grad)
    if isinstance(value, tuple):
        return tuple(_detach(v) for v in value)
    if isinstance(value, list):
        return [_detach(v) for v in value]
    if isinstance(value, dict):
        return {k: _detach(v) for k, v in value.items()}
    return value


def warm_up(
    model: torch.nn.Module,
    spec: ModelSpec,
    layers: list[LayerSpec],
    point: tuple[int, int],
    device: torch.device,
    head_loss: Callable | None = None,
) -> None:
    """One untimed pass of everything: first calls pay for kernel selection, lazy initialisation and compiling."""
    calls = capture_calls(model, spec, layers, point[0], point[1], device, head_loss)
    for layer in layers:
        for checkpointed in (False, True):
            run_backward(run_forward(layer, calls[layer.name], checkpointed))
    synchronize(device)


# ----- summarising -----------------------------------------------------------------------------------------------
def summarise_layer(
    layer: LayerSpec, parameters: list[torch.nn.Parameter], points: list[LayerMeasurement], spec: ModelSpec
) -> LayerProfile:
    attention = layer.kind in BLOCK_KINDS
    b = [p.micro_batch_size for p in points]
    s = [p.seq_len for p in points]
    kv = [p.kv_seq_len for p in points]

    def fit(values: list[float]):
        return fit_tokens(b, s, kv, [max(v, 1e-9) for v in values], attention)

    layer_seq, kv_seq = scaled_lengths(layer, spec, spec.seq_len)
    at_seq = [p for p in points if p.seq_len == layer_seq] or points
    peaks = [p.backward_peak_bytes for p in at_seq]
    ckpt_peaks = [p.checkpointed_backward_peak_bytes for p in at_seq]
    return LayerProfile(
        kind=layer.kind,
        name=layer.name,
        modules=module_paths(layer),
        param_bytes=sum(p.numel() * p.element_size() for p in parameters),
        params=sum(p.numel() for p in parameters),
        seq_len=layer_seq,
        kv_seq_len=kv_seq,
        forward=fit([p.forward_s for p in points]),
        backward=fit([p.backward_s for p in points]),
        recompute=fit([p.recompute_s for p in points]),
        activation_bytes_per_sample=per_sample(
            [p.micro_batch_size for p in at_seq], [p.saved_activation_bytes for p in at_seq]
        ),
        checkpointed_bytes_per_sample=per_sample(
            [p.micro_batch_size for p in at_seq], [p.checkpointed_saved_bytes for p in at_seq]
        ),
        backward_peak_bytes_per_sample=(
            per_sample([p.micro_batch_size for p in at_seq], peaks) if all(v is not None for v in peaks) else None
        ),
        checkpointed_backward_peak_bytes_per_sample=(
            per_sample([p.micro_batch_size for p in at_seq], ckpt_peaks)
            if all(v is not None for v in ckpt_peaks)
            else None
        ),
        measurements=points,
    )


def per_sample(micro_batches: list[int], values: list[float]) -> float:
    """Bytes per extra sample: the slope over micro-batch sizes (a fixed part, e.g. rotary tables, drops out)."""
    if len(set(micro_batches)) < 2:
        return float(values[0]) / micro_batches[0]
    slope, _ = np.polyfit(np.asarray(micro_batches, float), np.asarray(values, float), 1)
    return max(float(slope), 0.0)


def _summary(measurements: dict[str, list[LayerMeasurement]]) -> str:
    """The latest point of every kind, for the progress line."""
    parts = []
    for kind, points in measurements.items():
        last = points[-1]
        parts.append(f"{kind} fwd {last.forward_s * 1e3:.2f} ms bwd {last.backward_s * 1e3:.2f} ms")
    return "; ".join(parts)
