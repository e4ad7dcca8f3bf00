"""`hsfuse train`: train a fusion network on HR cubes (the LR/MSI pairs are simulated on the fly)."""

from __future__ import annotations

import inspect
from dataclasses import fields
from pathlib import Path
from typing import Any, List, Optional

import typer

from . import options
from .common import emit_json, err, guard, show_progress


def _cli_fields():
    """(field, its ``cli`` metadata, the command's parameter name) for each TrainConfig field that is an option,
    in the field order (``train/config.py``); an inverted flag is named after its flag (``--export-always``)."""
    from ..train.config import TrainConfig

    for f in fields(TrainConfig):
        meta = f.metadata.get("cli")
        if meta is not None:
            inverted = meta["kind"] == "inverted"
            yield f, meta, meta["flag"].lstrip("-").replace("-", "_") if inverted else f.name


def _config_options() -> list[inspect.Parameter]:
    """One option per TrainConfig field that has ``cli`` metadata."""
    params = []
    for f, meta, name in _cli_fields():
        kind, flag = meta["kind"], meta["flag"]
        if kind in ("flag", "inverted"):
            default, annotation = typer.Option(False, flag or "--" + f.name.replace("_", "-"), help=meta["help"]), bool
        else:
            annotation = {"switch": Optional[bool], "list": Optional[str], "json": Optional[str],
                          "schedule": Optional[str]}.get(kind) or Optional[_PLAIN[f.type]]
            decl = [f"--{f.name.replace('_', '-')}/--no-{f.name.replace('_', '-')}"] if kind == "switch" else \
                [flag] if flag else []
            default = typer.Option(None, *decl, help=meta["help"])
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation))
    return params


#: TrainConfig's annotations (strings: `from __future__ import annotations`) -> the option's type
_PLAIN = {"int": int, "float": float, "str": str, "bool": bool}


def _overrides(values: dict[str, Any]) -> dict[str, Any]:
    """The options given on the command line as TrainConfig values (None: not given, the file or default wins)."""
    split = lambda s: None if s is None else tuple(x.strip() for x in s.split(",") if x.strip())  # noqa: E731
    read = {"list": split, "json": _json_dict, "schedule": _schedule}
    over: dict[str, Any] = {}
    for f, meta, name in _cli_fields():
        kind = meta["kind"]
        if kind == "inverted":
            over[f.name] = False if values[name] else None
        elif kind == "flag":
            over[f.name] = values[name] or None
        else:
            over[f.name] = read.get(kind, lambda v: v)(values[name])
    return over


def train(data: Optional[List[Path]], config: Optional[Path], json_out: bool, quiet: bool, **values: Any) -> None:
    """Train a fusion network (CSAKD student by default, refining the GSA estimate) and optionally export it.

    Validation scenes are held out and evaluated against the GSA prior and
    bicubic on the same scenes; by default the export is skipped unless the
    network beats GSA on validation PSNR.

    Example:

        $ hsfuse train --protocol cave-gauss-x8 --steps 2000 --out-dir runs/s-x8 --export weights/csakd-s-cave-gauss-x8

        $ hsfuse train --model hsr-diff --protocol cave-mhf-x32 --model-kwargs '{"width": 32, "depth": 2}'

        $ torchrun --nproc-per-node 2 $(which hsfuse) train --config run.toml
    """
    with guard():
        from ..train.config import TrainConfig
        from ..train.loop import train as run_train

        over = {"data": None if not data else tuple(str(p) for p in data), **_overrides(values)}
        cfg = TrainConfig.resolve(config, over)
        log = None if quiet else (lambda m: err.print(m, soft_wrap=True))
        result = run_train(cfg, progress=show_progress(quiet, json_out), log=log)
        if result.export_skipped and not quiet:
            err.print(f"hsfuse train: {result.export_skipped}", soft_wrap=True)
        if json_out:
            emit_json({"config": cfg.to_dict(), **result.to_dict()})
        elif not quiet:
            v = result.validation
            if v:
                for k in ("model", "gsa", "bicubic"):
                    if k in v:
                        m = v[k]["mean"]
                        err.print(f"{k:8s} PSNR {m['psnr']:.3f} dB  SAM {m['sam']:.3f}  ERGAS {m['ergas']:.3f}")
            for p in result.exported:
                err.print(f"wrote {p}")


# the command's signature: the argument, --config, every TrainConfig option, --json, --quiet (typer reads it)
train.__signature__ = inspect.Signature([
    inspect.Parameter("data", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[List[Path]], default=typer.Argument(
        None, help="Folders of scenes (CAVE band folders, cube files) or cube files. Default: ../shared/data/cave.")),
    inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path], default=typer.Option(
        None, "--config", help="TOML file with TrainConfig fields (top level or \\[train]); flags override it.")),
    *_config_options(),
    inspect.Parameter("json_out", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                      default=options.json_flag(help="Print one JSON object with the result on stdout.")),
    inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                      default=options.quiet_flag(help="No progress bar or log lines.")),
])


def _json_dict(text: Optional[str]):
    """--model-kwargs: a JSON object, or a one-line usage error."""
    if text is None:
        return None
    import json

    from ..errors import UsageError

    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"--model-kwargs is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise UsageError("--model-kwargs must be a JSON object, e.g. '{\"nf\": 24}'")
    return d


def _schedule(text: Optional[str]):
    """--patch-schedule 0:64,1000:96 -> ((0, 64), (1000, 96)), or a one-line usage error."""
    if text is None:
        return None
    from ..errors import UsageError

    try:
        return tuple((int(a), int(b)) for a, b in (item.split(":") for item in text.split(",") if item.strip()))
    except ValueError:
        raise UsageError(f"--patch-schedule must look like 0:64,1000:96, got {text!r}") from None
