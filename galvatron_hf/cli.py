"""`galvatron-hf` command line: one sub-command per job, each in its own module under commands/.

Sub-command modules are imported only when chosen, so `galvatron-hf search` never loads torch.distributed.
Each module exposes ``add_arguments(parser)`` and ``run(args) -> int`` (the exit code).
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

COMMANDS = {
    "search": ("galvatron_hf.commands.search", "search the fastest hybrid-parallel plan that fits in memory"),
    "fit": ("galvatron_hf.commands.fit", "tabulate, over GPU counts and memory sizes, whether a model fits and how fast"),
    "profile": ("galvatron_hf.commands.profile", "measure the hardware or a model's layers into a JSON profile"),
    "export": ("galvatron_hf.commands.export", "export a training checkpoint as a Hugging Face model directory"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="galvatron-hf", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=_version())
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == chosen:  # only the chosen command's module is imported
            import_module(module_name).add_arguments(sub)
            sub.set_defaults(run=import_module(module_name).run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    return int(args.run(args) or 0)


def _version() -> str:
    from galvatron_hf import __version__

    return f"galvatron-hf {__version__}"


if __name__ == "__main__":
    raise SystemExit(main())
