"""Running fusion methods: the method interface, tiling and streaming (see engine.py)."""
