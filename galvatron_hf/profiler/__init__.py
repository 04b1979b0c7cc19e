"""Measure hardware and model layers into versioned JSON profiles the planner reads."""
