"""Fusion heads behind one registry, losses, metrics and the training loop."""
