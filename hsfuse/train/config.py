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


@dataclass(frozen=True)
class TrainConfig:
    # data and forward model
    data: tuple[str, ...] = (DEFAULT_DATA,)  # folders of scenes (CAVE band folders, cube files) or cube files
    validation_scenes: tuple[str, ...] = VALIDATION_SCENES
    train_scenes: tuple[str, ...] = ()  # empty: every scene found that is not a validation scene
    protocol: str = "cave-gauss-x8"  # preset, or "custom" with scale/psf_sigma/srf_file
    scale: int = 0  # custom protocol only
    psf_sigma: float = 0.0  # custom: Gaussian sigma in HR pixels (0: FWHM = scale)
    srf_file: str = ""  # custom: .npy/.csv (m x C) or .mat with R (C x m)
    noise_snr: float = 0.0  # dB; > 0 adds Gaussian noise of this SNR to LR and MSI patches
    srf_augment: int = 0  # SRF augmentation: this many random smooth perturbations of the SRFs (0: none)
    srf_augment_cameras: tuple[str, ...] = ()  # SRF augmentation: shipped response curves (hsfuse.forward.srf names)
    joint_scale: int = 0  # MulSR: also train on pairs at this second scale factor (its small_scale); 0: off
    spectral_augment: int = 0  # this many re-coloured copies of each training scene (data.spectral_variants)
    srf_tolerance_nm: float = 10.0  # recorded: how far (band centroid/width, nm) an input SRF may be for `fuse` to pick it
    # model
    model: str = "student"  # student | teacher | mftn | hyfusion | mulsr | hsr-diff (hsfuse.train.objectives)
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)  # extra constructor keywords (e.g. {"nf": 24})
    val_steps: int = 8  # hsr-diff: DDIM steps when validating
    prior: bool = True  # refine the detail-injection (GSA) estimate
    distill: bool = False  # online KD: co-train a teacher and distil it into the student
    nf: int = 0  # 0: width scaled with the band count
    heads: int = 0
    attn_window: int = 3  # LR pixels
    init_weights: str = ""  # start from these exported weights (fine-tuning); the optimiser starts fresh
    # optimisation
    steps: int = 2000
    batch: int = 8
    patch: int = 64  # HR patch side (a multiple of the scale)
    patch_schedule: tuple[tuple[int, int], ...] = ()  # progressive patch sizes ((start_step, patch), ...); overrides patch
    lr: float = 5e-4
    weight_decay: float = 1e-4
    warmup: int = 100
    min_lr_ratio: float = 0.05
    clip: float = 1.0
    loss_weights: Mapping[str, float] = field(default_factory=dict)  # overrides of the model's defaults
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch CPU threads (0: torch's default)
    # bookkeeping
    out_dir: str = "runs/csakd"
    checkpoint_every: int = 200
    val_every: int = 500
    val_tile: int = 0  # HR tile side for validation (0: whole scenes)
    resume: bool = False
    stop_after: int = 0  # stop (with a checkpoint) after this many steps in this invocation; resume continues
    time_limit_min: float = 0.0  # stop (with a checkpoint) after this many minutes in this invocation
    export: str = ""  # weights stem (e.g. weights/csakd-s-cave-gauss-x8); written after training
    export_if_better: bool = True  # export only if validation PSNR beats the GSA prior
    keep_best: bool = False  # export the weights of the validation with the best PSNR, not the last step's
    notes: str = ""

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
