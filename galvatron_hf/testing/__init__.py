"""Utilities for testing parallel layouts on one machine."""
