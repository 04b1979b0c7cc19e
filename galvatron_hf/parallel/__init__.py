"""Apply a Plan to an HF model with PyTorch-native parallelism (DeviceMesh, DTensor, FSDP2, pipelining)."""
