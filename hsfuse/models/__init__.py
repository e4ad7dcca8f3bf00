"""Fusion models: the registry (registry.py), classical methods and learned networks."""
