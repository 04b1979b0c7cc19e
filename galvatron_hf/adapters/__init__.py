"""Hugging Face configs -> ModelSpec: one adapter per model family."""
