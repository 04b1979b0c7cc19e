"""Regional compilation: ``torch.compile`` on each transformer block's own forward, as torchtitan does.

Compiling block by block instead of the whole model keeps the compile cheap (every block of a family runs
the same code, so one graph serves all of them) and composes with the other techniques:

- it runs after tensor parallelism, so the compiled region holds the block's DTensor-parallel linears, and
  before activation checkpointing, so a checkpointed block runs its compiled forward inside
  ``torch.utils.checkpoint`` (and again, compiled, when backward recomputes it). The other nesting
  (torchtitan's, checkpoint traced inside the graph) fails in AOT autograd under FSDP2 ZeRO-3 with torch 2.13
  ("expected all tensors_saved_with_vc_check to be Tensors"); recomputing the whole block is what the plan's
  checkpointing prices either way;
- only the block's ``forward`` is compiled, not ``nn.Module.__call__``: the module hooks that FSDP2 (unshard,
  reshard, gradient reduction) and the relayout tracker register around the block stay outside the graph and
  run eagerly, and no wrapper module enters the tree, so parameter names stay HF's;
- pipeline stages call the same block modules, so a stage's blocks run compiled too.

The compile itself happens on the first calls (forward, then backward). ``CompileClock`` adds up the time
spent compiling (torch's compile start/end callbacks) so it can be reported beside the step times.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
import weakref
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed._functional_collectives import AsyncCollectiveTensor
from torch.utils._pytree import tree_map_only

from galvatron_hf.adapters.spec import ModelSpec
from galvatron_hf.parallel.model_parts import present_blocks


@dataclass(frozen=True)
class CompileConfig:
    """``torch.compile`` settings for the blocks (``TrainingArguments.torch_compile*`` map onto these)."""

    backend: str = "inductor"
    mode: str | None = None  # "default", "reduce-overhead", "max-autotune", ... (torch.compile's modes)
    fullgraph: bool = False  # True: fail on a graph break instead of running the rest of the block eagerly

    @classmethod
    def from_training_args(cls, args) -> CompileConfig | None:
        """The Trainer's ``torch_compile`` / ``torch_compile_backend`` / ``torch_compile_mode``; None when off."""
        if not getattr(args, "torch_compile", False):
            return None
        return cls(
            backend=getattr(args, "torch_compile_backend", None) or "inductor",
            mode=getattr(args, "torch_compile_mode", None),
        )

    def describe(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
        return f"torch.compile per block ({fields})"


class CompileClock:
    """Seconds spent in ``torch.compile`` (Dynamo tracing, AOT autograd, backend code generation, lazy
    backward compiles) in this process since the clock was created.

    Compilation is process-wide, so a compile of another model in the same process counts too.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started: float | None = None
        self.seconds = 0.0
        self.compiles = 0
        handler = torch._dynamo.callback_handler
        start = handler.register_start_callback(_weak_call(self, "_start"))
        end = handler.register_end_callback(_weak_call(self, "_end"))
        weakref.finalize(self, _unregister, start, end)

    def _start(self, _args=None) -> None:
        with self._lock:
            self._started = time.perf_counter()

    def _end(self, _args=None) -> None:
        with self._lock:
            if self._started is not None:
                self.seconds += time.perf_counter() - self._started
                self.compiles += 1
                self._started = None

    def describe(self) -> str:
        return f"torch.compile: {self.compiles} compilation(s), {self.seconds:.1f} s"


def _weak_call(owner: object, method: str):
    ref = weakref.ref(owner)

    def call(args=None) -> None:
        target = ref()
        if target is not None:
            getattr(target, method)(args)

    return call


def _unregister(start, end) -> None:
    handler = torch._dynamo.callback_handler
    for callbacks, callback in ((handler.start_callbacks, start), (handler.end_callbacks, end)):
        if callback in callbacks:
            callbacks.remove(callback)


def apply_compile(module: nn.Module, spec: ModelSpec, config: CompileConfig | None) -> None:
    """Compile every block ``module`` holds (a model or one pipeline stage); nothing when ``config`` is None."""
    if config is None:
        return
    for _index, _layer, block in present_blocks(module, spec):
        compile_block(block, config)


def compile_block(block: nn.Module, config: CompileConfig) -> None:
    """Replace ``block.forward`` on the instance by its compiled version (hooks and names untouched)."""
    if getattr(block, "_galvatron_compiled", False):
        return
    options = {"backend": config.backend, "fullgraph": config.fullgraph}
    if config.mode is not None:
        options["mode"] = config.mode
    compiled = torch.compile(block.forward, **options)

    @functools.wraps(block.forward)
    def forward(*args, **kwargs):
        args, kwargs = tree_map_only(AsyncCollectiveTensor, _settled, (args, kwargs))
        return compiled(*args, **kwargs)

    block.forward = forward
    block._galvatron_compiled = True


def _settled(tensor: AsyncCollectiveTensor) -> torch.Tensor:
    """A plain tensor in place of a still-pending collective's result (a vocabulary-parallel embedding's
    output): AOT autograd gives such an input no gradient (torch 2.13), so the embedding would get none."""
    return tensor.clone()
