"""``TrainConfig``: every knob of a training run, resolved defaults < TOML file < CLI flags.

>>> cfg = TrainConfig.resolve("run.toml", {"steps": 2000, "seed": 1})
>>> cfg.protocol, cfg.validation_scenes[0]
('cave-gauss-x8', 'fake_and_real_peppers')

A TOML file holds the same field names at the top level (``steps = 2000``)
or under a ``[train]`` table; unknown keys are an error that lists the known ones.
"""

from __future__ import annotations

import dataclasses
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as a package
    import tomli as tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from ..errors import UsageError

#: the CAVE scenes held out for validation (never trained on); also written to the record
VALIDATION_SCENES = ("fake_and_real_peppers", "oil_painting", "stuffed_toys")
DEFAULT_DATA = str(Path(__file__).resolve().parents[3] / "shared" / "data" / "cave")

#: CSAKD loss weights (see docs/models/csakd.md; other models: hsfuse.train.objectives): L1 to ground truth, response KD (student to teacher output),
#: feature KD (adapted student features to teacher features), band-energy-balanced MSE, SAM (radians)
DEFAULT_LOSS_WEIGHTS = {"l1": 1.0, "kd": 0.5, "feat": 0.1, "beba": 0.1, "sam": 0.05}


def cli(help: str, flag: str | None = None, kind: str | None = None) -> dict[str, Any]:
    """A field's ``hsfuse train`` option (``cli/train.py`` builds the command from these): its help, its flag
    when not ``--field-name``, and how the text is read: ``list`` (comma-separated), ``json`` (an object),
    ``schedule`` (STEP:PATCH,...), ``switch`` (``--x/--no-x``), ``flag`` (true when given), ``inverted``
    (a flag that sets the field false)."""
    return {"cli": {"help": help, "flag": flag, "kind": kind}}


def opt(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **kw: Any) -> Any:
    """A TrainConfig field with its command-line option (``cli``)."""
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=cli(**kw))
    return field(default=default, metadata=cli(**kw))


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a training run. A field with ``cli`` metadata is also an ``hsfuse train`` option (same
    order, same name unless ``flag`` says otherwise); the others are set in a TOML file."""

    # data and forward model
    data: tuple[str, ...] = (DEFAULT_DATA,)  # folders of scenes (CAVE band folders, cube files) or cube files: the argument
    protocol: str = opt("cave-gauss-x8", help="Forward model: cave-gauss-x8, cave-mhf-x32, or custom (with --scale, --srf-file).")
    scale: int = opt(0, help="Scale of a custom protocol.")
    psf_sigma: float = opt(0.0, help="Gaussian PSF sigma of a custom protocol (HR pixels; default FWHM = scale).")
    srf_file: str = opt("", help="SRF of a custom protocol: .npy/.csv (m x C) or .mat with R (C x m).")
    validation_scenes: tuple[str, ...] = opt(VALIDATION_SCENES, flag="--val-scenes", kind="list",
                                             help="Comma-separated held-out scene names.")
    train_scenes: tuple[str, ...] = opt((), kind="list",  # empty: every scene found that is not a validation scene
                                        help="Comma-separated training scenes (default: all others).")
    noise_snr: float = opt(0.0, help="Add Gaussian noise of this SNR (dB) to LR and MSI patches.")
    srf_augment: int = opt(0, help="SRF augmentation: this many random smooth perturbations of the response curves.")
    srf_augment_cameras: tuple[str, ...] = opt((), kind="list",  # shipped response curves (hsfuse.forward.srf names)
                                               help="SRF augmentation: comma-separated shipped curves (e.g. nikon-5100).")
    joint_scale: int = opt(0, help="MulSR: also train at this second (smaller) scale factor, e.g. 4 for an x8 protocol.")
    spectral_augment: int = opt(0, help="Spectral augmentation: this many re-coloured copies (smooth random spectral "
                                        "gain) of each training scene.")
    srf_tolerance_nm: float = opt(10.0, flag="--srf-tolerance", help="Record: how far (nm) an input SRF may be from the "
                                                                     "training one for `fuse` to pick the model.")
    # model
    model: str = opt("student", help="student | teacher (CSAKD) | mftn | hyfusion | mulsr | hsr-diff.")
    model_kwargs: Mapping[str, Any] = opt(factory=dict, flag="--model-kwargs", kind="json",
                                          help='Extra network constructor keywords as JSON, e.g. \'{"nf": 24}\'.')
    val_steps: int = opt(8, help="hsr-diff: DDIM sampling steps used for validation (default 8).")
    prior: bool = opt(True, kind="switch", help="Refine the GSA detail-injection estimate (default on).")
    distill: bool = opt(False, kind="switch", help="Co-train a teacher and distil it into the student.")
    lr_projection: bool = opt(False, kind="switch",
                              help="Train through the exact LR projection (PSFs whose LR pixels draw on disjoint HR "
                                   "pixels): the network learns only what the LR-HSI cannot fix; fuse applies it too.")
    nf: int = opt(0, help="Feature width (default: scaled with the band count).")
    heads: int = opt(0, help="Attention heads (default: width / 4 for the student, / 8 for the teacher).")
    attn_window: int = 3  # LR pixels
    init_weights: str = opt("", help="Start from these exported weights (fine-tuning; fresh optimiser).")
    # optimisation
    steps: int = opt(2000, help="Optimiser steps.")
    batch: int = opt(8, help="Patches per step (per process).")
    patch: int = opt(64, help="HR patch side (a multiple of the scale).")
    patch_schedule: tuple[tuple[int, int], ...] = opt((), kind="schedule",  # ((start_step, patch), ...)
                                                      help="Progressive patch sizes STEP:PATCH,... (e.g. 0:64,1000:96); "
                                                           "overrides --patch.")
    lr: float = opt(5e-4, flag="--lr", help="Peak learning rate (AdamW).")
    weight_decay: float = opt(1e-4, help="AdamW weight decay.")
    warmup: int = opt(100, help="Linear warmup steps before the cosine decay.")
    min_lr_ratio: float = 0.05
    clip: float = opt(1.0, help="Gradient-norm clipping (0: off).")
    loss_weights: Mapping[str, float] = field(default_factory=dict)  # overrides of the model's defaults
    seed: int = opt(0, help="Random seed (weights init and patch sampling).")
    device: str = opt("auto", help="auto | cpu | cuda | cuda:N.")
    threads: int = opt(0, help="Torch CPU threads (0: default).")
    # bookkeeping
    out_dir: str = opt("runs/csakd", flag="--out-dir", help="Run folder: checkpoint.pt, log.csv, log.json.")
    checkpoint_every: int = opt(200, help="Steps between checkpoints.")
    val_every: int = opt(500, help="Steps between validations.")
    val_tile: int = opt(0, help="Validate in HR tiles of this side (0: whole scenes).")
    resume: bool = opt(False, kind="flag", help="Continue the run in --out-dir from its checkpoint.")
    stop_after: int = opt(0, help="Stop (with a checkpoint) after this many steps in this invocation; --resume continues.")
    time_limit_min: float = opt(0.0, flag="--time-limit",
                                help="Stop (with a checkpoint) after this many minutes in this invocation.")
    export: str = opt("", flag="--export", help="Write weights/NAME.safetensors + .json after training.")
    export_if_better: bool = opt(True, flag="--export-always", kind="inverted",
                                 help="Export even if the model does not beat its GSA prior.")
    keep_best: bool = opt(False, kind="flag",
                          help="Export the weights of the best validation (early stopping), not the last step's.")
    notes: str = opt("", help="Free text added to the record's notes.")

    def __post_init__(self) -> None:
        from ..models.architectures import TRAINABLE

        if self.model not in TRAINABLE:
            raise UsageError(f"model must be one of {', '.join(TRAINABLE)}, got {self.model!r}")
        if self.distill and self.model != "student":
            raise UsageError("distill trains a student from a co-trained teacher: use model = 'student'")
        if self.joint_scale and self.model != "mulsr":
            raise UsageError("joint_scale trains a network that serves two scale factors: use model = 'mulsr'")
        if self.joint_scale < 0 or self.joint_scale == 1:
            raise UsageError(f"joint_scale must be an integer scale factor >= 2 (or 0: off), got {self.joint_scale}")
        if self.joint_scale and (self.srf_augment or self.srf_augment_cameras):
            raise UsageError("joint_scale cannot be combined with SRF augmentation yet")
        for name in ("steps", "batch", "patch", "checkpoint_every", "val_every", "val_steps"):
            if getattr(self, name) <= 0:
                raise UsageError(f"{name} must be positive, got {getattr(self, name)}")
        if self.patch_schedule:
            from ..models.diffusion import progressive_patch_size

            try:
                progressive_patch_size(0, self.patch_schedule)
            except (ValueError, TypeError, IndexError) as e:
                raise UsageError(f"patch_schedule: {e}") from None
        known = TRAINABLE[self.model].loss_weights
        unknown = set(self.loss_weights) - set(known)
        if unknown:
            raise UsageError(f"unknown loss weights {sorted(unknown)} for model {self.model} (known: {', '.join(known)})")

    @property
    def weights(self) -> dict[str, float]:
        """The model's default loss weights with this run's overrides."""
        from ..models.architectures import TRAINABLE

        w = dict(TRAINABLE[self.model].loss_weights)
        w.update(self.loss_weights)
        return w

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["loss_weights"] = self.weights
        d["model_kwargs"] = dict(self.model_kwargs)
        d["data"] = list(self.data)
        return d

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], base: "TrainConfig | None" = None) -> "TrainConfig":
        known = set(cls.field_names())
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"unknown training option(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        vals = dict(values)
        if "patch_schedule" in vals and vals["patch_schedule"] is not None:
            vals["patch_schedule"] = tuple((int(a), int(b)) for a, b in vals["patch_schedule"])
        for name in ("data", "validation_scenes", "train_scenes", "srf_augment_cameras"):
            if name in vals and vals[name] is not None:
                v = vals[name]
                vals[name] = (v,) if isinstance(v, str) else tuple(str(x) for x in v)
        if "loss_weights" in vals:
            w = dict(base.loss_weights) if base is not None else {}
            w.update(vals["loss_weights"])
            vals["loss_weights"] = w
        if "model_kwargs" in vals:
            vals["model_kwargs"] = dict(vals["model_kwargs"] or {})
        return dataclasses.replace(base or cls(), **vals)

    @classmethod
    def resolve(cls, config_file: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> "TrainConfig":
        """Defaults < TOML file < ``overrides`` (CLI flags; None values mean "not given")."""
        cfg = cls()
        if config_file:
            path = Path(config_file)
            try:
                doc = tomllib.loads(path.read_text())
            except FileNotFoundError:
                raise UsageError("config file not found", path) from None
            except tomllib.TOMLDecodeError as e:
                raise UsageError(f"invalid TOML: {e}", path) from None
            doc = dict(doc.get("train", doc))
        else:
            doc = {}
        # one merge, validated once: a flag (e.g. --model) may make the file's values valid
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        if "loss_weights" in doc and "loss_weights" in given:
            given["loss_weights"] = {**dict(doc["loss_weights"]), **dict(given["loss_weights"])}
        return cls.from_dict({**doc, **given}, cfg) if doc or given else cfg
