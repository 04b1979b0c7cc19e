"""Sub-commands of the `galvatron-hf` CLI (see galvatron_hf/cli.py)."""
