"""The forward model of a pair: how an LR-HSI and an HR-MSI arise from one high-resolution cube Z.

    LR = decimate_s(Z ⊛ PSF) (+ noise)        MSI = diag(gain) · SRF · Z (+ noise)

One home for it (docs/architecture.md):

* ``psf.py``       what a PSF is (``Psf``, named kernels, ``make_psf``, the LR grid's sampling phase)
* ``srf.py``       what an SRF is (built-in sensor tables, files, ``load_srf``)
* ``degrade.py``   applying both (``spatial_degrade`` in numpy and its one torch twin, ``degrade_cube``)
* ``protocols.py`` the named presets of the field (``get_protocol``), each reproducing a published code path
* ``estimate.py``  finding PSF and SRF from the pair itself (``estimate_pair``), least-squares SRF
* ``blind.py``     the HySure alternation and the estimate JSON that ``--psf F --srf F`` read back
* ``model.py``     ``ForwardModel`` and ``resolve_forward_model``: flags < preset < file < estimate, resolved once
"""

from .degrade import apply_srf, degrade_cube, spatial_degrade, spatial_degrade_t
from .estimate import PairEstimate, estimate_from_sources, estimate_pair
from .model import ForwardModel, resolve_forward_model
from .protocols import Protocol, get_protocol
from .psf import Psf, make_psf, psf_distance
from .srf import Srf, load_srf

__all__ = ["ForwardModel", "resolve_forward_model", "Psf", "make_psf", "psf_distance", "Srf", "load_srf",
           "Protocol", "get_protocol", "apply_srf", "degrade_cube", "spatial_degrade", "spatial_degrade_t",
           "PairEstimate", "estimate_pair", "estimate_from_sources"]
