"""Cost model and search: ModelSpec + hardware -> Plan. Pure Python: never imports torch.distributed."""
