"""The networks (``nn.Module``s only): built from a weights record through ``models/architectures.py``,
run by the fusers of ``models/`` (``zoo_fuser.NetworkFuser``, ``hsrdiff.HSRDiffFuser``)."""
