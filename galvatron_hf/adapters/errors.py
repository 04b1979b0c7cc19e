"""Errors raised while turning a model name or config into a ModelSpec.

Both subclass ``ValueError`` so callers that only know "bad input" can catch them; each message names the fix.
"""

from __future__ import annotations


class UnsupportedArchitectureError(ValueError):
    """The config's model type or the requested head has no adapter."""

    def __init__(self, what: str, supported: dict[str, tuple[str, ...]]) -> None:
        lines = [f"  {model_type}: {', '.join(archs)}" for model_type, archs in sorted(supported.items())]
        super().__init__(
            f"{what} is not supported. Supported model types and their architectures:\n"
            + "\n".join(lines)
            + "\nPass architecture=<one of these> (or set config.architectures), or add an adapter:"
            " see docs/adapters.md, 'Adding a family'."
        )


class UnknownModelError(ValueError):
    """A model name is neither a bundled config nor a local config.json / directory."""

    def __init__(self, name: str, bundled: list[str]) -> None:
        super().__init__(
            f"Unknown model {name!r}: it is not a bundled config and no local path. Nothing is downloaded.\n"
            f"Bundled models: {', '.join(bundled)}.\n"
            "Otherwise pass the path of a config.json, a directory holding one (e.g. a save_pretrained output), "
            "a transformers PretrainedConfig, or a config dict."
        )
