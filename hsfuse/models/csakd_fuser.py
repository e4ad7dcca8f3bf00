"""``CSAKDFuser``: a trained CSAKD network behind the ``Fuser`` interface of the tiling engine.

    $ hsfuse fuse lr.hdr msi.tif -o out.hdr --model csakd-s --protocol cave-gauss-x8

The weights (``weights/csakd-s-*.safetensors`` + ``.json``) are chosen by scale
(or given in ``problem.options["weights"]``); their record must match the
inputs (band counts, scale) or a ``ModelError`` says what does not fit. With a
``prior=True`` network, ``fit`` fits the detail-injection (GSA) regression on
the whole scene and ``fuse_tile`` refines that method's tile estimate.

``halo_lr`` defaults to the network's receptive radius plus the prior's halo
(an upper bound: tiled and untiled fusion then agree to float rounding); a
weights record may carry a smaller measured halo (``"halo_lr": {"8": n}``) at
which the tiled/untiled difference stays below 1e-4 with the engine's overlap
blending; ``problem.options["halo_lr"]`` overrides both. docs/models/csakd.md
gives the measurements.
"""

from __future__ import annotations

from .zoo_fuser import NetworkFuser


class CSAKDFuser(NetworkFuser):
    """CSAKD student/teacher network; optionally refining the GSA detail-injection estimate.

    Loading, input checks, halo and tiling are those of every trained network (``NetworkFuser``).
    """

    name = "csakd-s"
