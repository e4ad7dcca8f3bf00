"""The weights format: ``NAME.safetensors`` plus ``NAME.json`` (the training record).

The record says what the weights mean and how they were made, so ``fuse`` can
check inputs against it and users can judge it::

    {"name", "architecture", "kwargs", "bands", "wavelengths", "msi_bands",
     "srf" (m x C list), "srf_name", "scales", "protocol", "training_data",
     "validation_scenes", "steps", "device", "gpu_seconds"/"cpu_seconds",
     "git_commit", "created", "validation_metrics", "notes",
     "sha256" (of the .safetensors file), "format_version": 1}

Loading checks the sha256 and never executes pickles (safetensors only).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .errors import ModelError

FORMAT_VERSION = 1
REQUIRED_FIELDS = ("name", "architecture", "kwargs", "bands", "scales", "protocol", "training_data", "steps", "validation_metrics")


class WeightsRecord(dict):
    """A weights record (the JSON, as a dict) with typed readings of the fields the engine decides on.

    Parsed where read (``read_record``); every reading tolerates a hand-edited or foreign record:
    a field it cannot read is "not recorded" (None / empty), never a crash in the default choice.
    """

    @classmethod
    def of(cls, rec: Mapping[str, Any]) -> "WeightsRecord":
        return rec if isinstance(rec, WeightsRecord) else cls(rec)

    @property
    def scales(self) -> list[int]:
        try:
            return [int(x) for x in self.get("scales") or []]
        except (TypeError, ValueError):
            return []

    @property
    def bands(self) -> int | None:
        try:
            return int(self["bands"])
        except (KeyError, TypeError, ValueError):
            return None

    @property
    def msi_bands(self) -> int | None:
        try:
            return None if self.get("msi_bands") is None else int(self["msi_bands"])
        except (TypeError, ValueError):
            return None

    @property
    def wavelengths(self) -> np.ndarray | None:
        try:
            return None if self.get("wavelengths") is None else np.asarray(self["wavelengths"], dtype=float)
        except (TypeError, ValueError):
            return None

    @property
    def protocol(self) -> str:
        return str(self.get("protocol") or "")

    @property
    def srf_tolerance_nm(self) -> float:
        try:
            return float(self.get("srf_tolerance_nm", 10.0))
        except (TypeError, ValueError):
            return 10.0

    @property
    def srf_summary(self) -> dict[str, Any]:
        v = self.get("srf_summary")
        return v if isinstance(v, dict) else {}

    def validation_gain(self, scale: int) -> float | None:
        """Mean PSNR gain over ``gsa`` on the record's validation scenes at ``scale`` (dB); None if not recorded.

        Every shipped network refines the same ``gsa`` estimate on the same held-out scenes, so the
        gain over it ranks weights trained under different protocols too.
        """
        try:
            val = self.get("validation_metrics") or {}
            joint = val.get("joint_scale") or {}
            if joint and int(joint.get("scale", 0)) == scale:
                val = joint
            return float(val["model"]["mean"]["psnr"]) - float(val["gsa"]["mean"]["psnr"])
        except (AttributeError, KeyError, TypeError, ValueError):
            return None

    def protocol_validation(self, protocol: str | None, scale: int | None = None) -> dict[str, Any] | None:
        """How these weights did under another preset than their own, measured on the held-out scenes
        (``benchmarks/bench_process.py --record``): {"gain": mean PSNR gain over gsa, "worst": the smallest
        per-scene gain, "scenes": n, "srf": the SRF it was measured with when the preset leaves it open}; None when
        never measured there, at ``scale`` when the entry names one (or the entry is malformed).

        A network learns one blur; under another it may still help (the MHF-trained x32 weights gain 1.5 dB
        under the HIFtool Gaussian) or hurt: only a measurement says which, so the model choice accepts
        another preset's PSF only where one was made (``engine.measured_better``)."""
        if not protocol or protocol.lower() == self.protocol.lower():  # its own preset: validation_metrics
            return None
        try:
            entry = (self.get("validation_protocols") or {})[protocol]
            gains = [float(v["model"]) - float(v["gsa"]) for v in entry["scenes"].values()]
            if scale is not None and entry.get("scale") is not None and int(entry["scale"]) != int(scale):
                return None  # an open-scale preset measured at another scale
        except (AttributeError, KeyError, TypeError, ValueError):
            return None
        if not gains:
            return None
        return {"gain": sum(gains) / len(gains), "worst": min(gains), "scenes": len(gains), "srf": entry.get("srf")}

    def cpu_cost_vs_gsa(self, scale: int) -> float | None:
        """Measured whole-process CPU cost over gsa's at ``scale`` (benchmarks/bench_process.py --record); at a
        scale it was not measured at, the largest measured one (the cost is per HR pixel); None if never measured."""
        try:
            cost = {str(k): float(v) for k, v in ((self.get("cpu_cost_vs_gsa") or {}).get("ratio") or {}).items()}
        except (AttributeError, TypeError, ValueError):
            return None
        return cost.get(str(scale), max(cost.values()) if cost else None)

    @property
    def cpu_cost_ratios(self) -> dict[str, float] | None:
        try:
            return {str(k): float(v) for k, v in (self.get("cpu_cost_vs_gsa") or {}).get("ratio").items()}
        except (AttributeError, TypeError, ValueError):
            return None


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def git_commit(repo: str | Path | None = None) -> str | None:
    """The current commit of the hsfuse checkout (recorded in training records)."""
    repo = Path(repo) if repo else Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def save_weights(stem: str | Path, state_dict: dict, record: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``stem.safetensors`` and ``stem.json`` atomically; returns both paths."""
    from safetensors.torch import save_file

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    st_path, js_path = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    tmp_st = st_path.with_name(f".{st_path.name}.tmp-{os.getpid()}")
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(tmp_st))
    rec = dict(record)
    rec.setdefault("name", stem.name)
    rec.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    rec.setdefault("git_commit", git_commit())
    rec["format_version"] = FORMAT_VERSION
    rec["weights_file"] = st_path.name
    rec["sha256"] = sha256_file(tmp_st)
    rec["parameters"] = int(sum(int(np.prod(t.shape)) for t in tensors.values()))
    tmp_js = js_path.with_name(f".{js_path.name}.tmp-{os.getpid()}")
    tmp_js.write_text(json.dumps(_jsonable(rec), indent=2) + "\n")
    os.chmod(tmp_st, 0o644)  # safetensors creates it private; weights are meant to be shared
    os.replace(tmp_st, st_path)
    os.replace(tmp_js, js_path)
    return st_path, js_path


def read_record(path: str | Path) -> WeightsRecord:
    """The JSON record for a weights stem, ``.json`` or ``.safetensors`` path."""
    js = Path(path).with_suffix(".json")
    try:
        rec = json.loads(js.read_text())
    except FileNotFoundError:
        raise ModelError("weights record (.json) not found", js) from None
    except json.JSONDecodeError as e:
        raise ModelError(f"weights record is not valid JSON: {e}", js) from None
    missing = [f for f in REQUIRED_FIELDS if f not in rec]
    if missing:
        raise ModelError(f"weights record lacks fields: {', '.join(missing)}", js)
    return WeightsRecord(rec)


def load_weights(path: str | Path, verify: bool = True) -> tuple[dict, dict[str, Any]]:
    """(state_dict, record) after checking the sha256 recorded in the JSON."""
    from safetensors.torch import load_file

    rec = read_record(path)
    st = Path(path).with_suffix(".safetensors")
    if not st.exists():
        raise ModelError("weights file not found", st)
    if verify:
        digest = sha256_file(st)
        if digest != rec.get("sha256"):
            raise ModelError(f"sha256 mismatch (file {digest[:12]}…, record {str(rec.get('sha256'))[:12]}…): corrupt or replaced weights", st)
    try:
        state = load_file(str(st))
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise ModelError(f"cannot read weights: {e}", st) from None
    return state, rec
