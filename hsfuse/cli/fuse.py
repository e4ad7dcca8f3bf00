"""`hsfuse fuse`: the command users came for."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import HsfuseError, InputError, OutputError, UsageError
from . import options
from .common import emit_json, err, guard, show_progress


def _progress_bar(enabled: bool):
    """A rich progress bar on stderr, or a no-op; returns (context manager, callback)."""
    import contextlib

    if not enabled:
        return contextlib.nullcontext(), None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=err, transient=True)
    tasks: dict[str, int] = {}

    def callback(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done)

    return bar, callback


def _pairs_from(inputs: list[Path], pairs_csv: Optional[Path], out_dir: Optional[Path], output: Optional[Path],
                out_format: Optional[str]) -> list[tuple[Path, Path, Path]]:
    if pairs_csv is not None:
        if inputs:
            raise UsageError("give either --pairs or positional LR MSI inputs, not both")
        if not pairs_csv.is_file():
            raise InputError("pairs file not found", pairs_csv)
        rows = list(csv.DictReader(pairs_csv.read_text().splitlines()))
        if not rows or not {"lr", "msi"} <= set(rows[0]):
            raise InputError("pairs CSV needs a header with columns lr,msi[,output]", pairs_csv)
        base = pairs_csv.parent
        out = []
        for r in rows:
            lr, msi = base / r["lr"], base / r["msi"]
            if r.get("output"):  # relative to --out-dir when one is given, else to the CSV
                dst = (out_dir if out_dir is not None else base) / r["output"]
            elif out_dir is not None:
                dst = out_dir / _default_name(lr, out_format)
            else:
                raise UsageError("pairs CSV rows without an 'output' column need --out-dir")
            out.append((lr, msi, dst))
        return _unique_outputs(out, out_format)
    if len(inputs) == 2 and output is not None:
        if out_dir is not None:
            raise UsageError("give either -o/--output or --out-dir, not both")
        return [(inputs[0], inputs[1], output)]
    if output is not None:
        raise UsageError(f"-o/--output takes one pair (LR MSI); got {len(inputs)} inputs (use --out-dir for several)")
    if out_dir is None:
        raise UsageError("missing -o/--output (or --out-dir for several pairs)")
    if not inputs or len(inputs) % 2:
        raise UsageError(f"inputs must come in LR MSI pairs; got {len(inputs)} paths")
    jobs = [(inputs[i], inputs[i + 1], out_dir / _default_name(inputs[i], out_format)) for i in range(0, len(inputs), 2)]
    return _unique_outputs(jobs, out_format)


def _unique_outputs(jobs: list[tuple[Path, Path, Path]], out_format: Optional[str]) -> list[tuple[Path, Path, Path]]:
    """One output per pair, checked before any work: derived names that collide (``a/lr.hdr`` and ``b/lr.hdr``)
    take the LR's folder names; outputs that still collide, or that are an input, are refused."""
    def key(p: Path) -> str:
        return str(p.resolve())

    seen: dict[str, int] = {}
    for _, _, dst in jobs:
        seen[key(dst)] = seen.get(key(dst), 0) + 1
    fixed = []
    for lr, msi, dst in jobs:
        if seen[key(dst)] > 1 and dst.name == _default_name(lr, out_format):
            parts = [p for p in lr.resolve().parent.parts[-1:] if p not in ("/", "")]
            dst = dst.parent / ("_".join(parts + [lr.stem]) + "_fused" + Path(_default_name(lr, out_format)).suffix)
        fixed.append((lr, msi, dst))
    final: dict[str, tuple[Path, Path]] = {}
    for lr, msi, dst in fixed:
        if key(dst) in final:
            a = final[key(dst)][0]
            raise UsageError(f"pairs {a} and {lr} would both be written to {dst}: give each pair its own output")
        final[key(dst)] = (lr, msi)
    from ..io import check_not_input

    inputs = [p for lr, msi, _ in fixed for p in (lr, msi)]
    for _, _, dst in fixed:
        check_not_input(dst, inputs)
    return fixed


def _parse_options(items: list[str]) -> dict:
    """KEY=VALUE strings -> dict, values as int, float, bool or str."""
    opts = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--option expects KEY=VALUE, got '{item}'")
        v: object = value
        for conv in (int, float):
            try:
                v = conv(value)
                break
            except ValueError:
                continue
        if value.lower() in ("true", "false"):
            v = value.lower() == "true"
        opts[key.strip()] = v
    return opts


def _default_name(lr: Path, out_format: Optional[str]) -> str:
    ext = {"envi": ".hdr", "tiff": ".tif", "mat": ".mat"}.get((out_format or "").lower())
    if ext is None:
        ext = lr.suffix if lr.suffix.lower() in (".hdr", ".tif", ".tiff", ".mat") else ".tif"
    return f"{lr.stem}_fused{ext}"


def fuse(
    inputs: List[Path] = typer.Argument(None, help="LR MSI (one pair with -o; several pairs with --out-dir).", show_default=False),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output file; its extension picks the format."),
    model: Optional[str] = typer.Option(None, "-m", "--model", help="Model name (see `hsfuse models`); default: the best that fits."),
    protocol: Optional[str] = options.protocol_option(short=False, help="Degradation preset giving PSF and SRF (see docs/protocols.md)."),
    psf: Optional[str] = options.psf_option(help="PSF: gaussian, box, or a kernel file (.npy, .csv, .mat:VAR)."),
    sigma: Optional[float] = options.sigma_option(help="Gaussian PSF sigma in HR pixels (default FWHM = scale)."),
    psf_form: str = options.form_option(help="PSF sampling form: block | conv."),
    srf: Optional[str] = options.srf_option(help="MSI spectral response (built-in name or file); estimated from the pair when absent."),
    estimate: str = typer.Option("auto", "--estimate", help="What is not given of PSF/SRF: auto (estimate per pair), "
                                 "once (estimate on the first pair, reuse for the batch), off (assume a Gaussian PSF, FWHM = scale)."),
    save_estimate: Optional[Path] = typer.Option(None, "--save-estimate", help="Write the estimated PSF/SRF as JSON "
                                                 "(reusable as --psf FILE --srf FILE)."),
    denoise: str = typer.Option("auto", "--denoise", help="auto (denoise an input whose estimated SNR is below "
                                "36 dB), on, or off."),
    clip: str = typer.Option("auto", "--clip", help="auto: negative output values become 0 when the LR-HSI has "
                             "none (physical radiance/reflectance); off keeps them."),
    force: bool = typer.Option(False, "--force", help="Fuse even when the estimate says the MSI does not match the LR."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | bf16 | fp16 (GPU only)."),
    threads: int = typer.Option(0, "--threads", help="CPU threads (0: the cores this process may use; more "
                                "than that oversubscribes and runs 2-6x slower)."),
    tile: int = typer.Option(512, "--tile", help="Tile side in output (HR) pixels; memory scales with it."),
    overlap: Optional[int] = typer.Option(None, "--overlap", help="HR pixels blended between tiles (default: the model's)."),
    out_format: Optional[str] = typer.Option(None, "--format", help="Output format override: envi | tiff | mat."),
    out_dtype: str = typer.Option("float32", "--dtype", help="Output type: float32, float64, or same / an integer "
                                  "type (the LR's own encoding: scale factor, offset, nodata)."),
    creation: List[str] = typer.Option([], "--co", help="Writer option KEY=VALUE (repeatable), e.g. --co "
                                       "compress=deflate (TIFF), --co interleave=bil (ENVI)."),
    lr_var: Optional[str] = typer.Option(None, "--lr-var", help="Variable of a .mat LR input."),
    msi_var: Optional[str] = typer.Option(None, "--msi-var", help="Variable of a .mat MSI input."),
    option: List[str] = typer.Option([], "-O", "--option", help="Model option KEY=VALUE (repeatable), e.g. -O steps=8 -O seed=1."),
    pairs: Optional[Path] = typer.Option(None, "--pairs", help="CSV with columns lr,msi[,output] (paths relative to the CSV)."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Output folder for several pairs."),
    keep_going: bool = typer.Option(False, "--keep-going", help="With several pairs, go on after a failed pair."),
    overwrite: bool = options.overwrite_flag(help="Replace existing outputs."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Resolve inputs, model, tiles and device; print the plan; compute nothing."),
    json_out: bool = options.json_flag(help="Print one JSON object on stdout: {pairs, ok, failed, total} "
                                  "(with one pair, its fields at the top level too)."),
    jsonl: bool = typer.Option(False, "--jsonl", help="Print one JSON line per pair as each finishes (for xargs, "
                               "parallel, jq -c)."),
    quiet: bool = options.quiet_flag(help="No progress or messages (errors still go to stderr)."),
) -> None:
    """Fuse an LR hyperspectral cube with an HR multispectral image into an HR hyperspectral cube.

    The output lies on the MSI's grid (with its georeferencing) and carries the LR's wavelengths.

    $ hsfuse fuse lr.hdr msi.tif -o fused.hdr

    $ hsfuse fuse lr.tif rgb.tif -o out.tif --model cnmf --srf nikon-5100 --json

    $ hsfuse fuse --pairs pairs.csv --out-dir fused/ --keep-going --estimate once

    Without --psf/--srf/--protocol the PSF (width, sampling phase, shift) and the SRF are estimated
    from the pair itself and reported on one line; a pair that follows a named preset is fused as if
    --protocol had been given (docs/fusion.md).
    """
    with guard():
        from ..fusion.engine import FuseConfig, fuse_files, make_plan
        from ..io import check_writable, open_cube

        co_opts = {k: v for k, v in _parse_options(creation).items()}
        if threads < 0:
            raise UsageError(f"--threads must be >= 0, got {threads}")
        _set_threads(threads)
        if psf is None and psf_form != "conv":
            raise UsageError("--form goes with --psf (it says how that PSF samples the LR grid)")
        mode = estimate.strip().lower()
        if mode not in ("auto", "once", "off"):
            raise UsageError(f"--estimate must be auto, once or off, got '{estimate}'")
        if save_estimate is not None and save_estimate.exists() and not overwrite:
            raise OutputError("exists (use --overwrite)", save_estimate)
        if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
            raise OutputError("--out-dir exists and is not a folder", out_dir)
        jobs = _pairs_from(list(inputs or []), pairs, out_dir, output, out_format)
        if save_estimate is not None and len(jobs) > 1 and mode != "once":
            raise UsageError("--save-estimate with several pairs needs --estimate once (one estimate for the batch)")
        if out_dir is not None and not dry_run:
            out_dir.mkdir(parents=True, exist_ok=True)
        cfg = FuseConfig(model=model, tile=tile, overlap=overlap, device=device, precision=precision,
                         psf=psf, sigma=sigma, psf_form=psf_form, srf=srf, protocol=protocol,
                         options=_parse_options(option), estimate="off" if mode == "off" else "auto", force=force,
                         denoise=denoise.strip().lower(), clip=clip.strip().lower())
        lr_opts = {"var": lr_var} if lr_var else {}
        msi_opts = {"var": msi_var} if msi_var else {}

        def say(msg: str) -> None:
            if not quiet:
                err.print(msg, soft_wrap=True, markup=False)

        if json_out and jsonl:
            raise UsageError("give --json or --jsonl, not both")
        results, failed = [], 0
        saved = False
        exit_code = 1

        def record(doc: dict) -> None:
            results.append(doc)
            if jsonl:
                emit_json(doc, compact=True)

        for lr_path, msi_path, out_path in jobs:
            try:
                if dry_run:
                    with open_cube(lr_path, **lr_opts) as lr, open_cube(msi_path, **msi_opts) as msi:
                        plan_obj = make_plan(lr, msi, cfg, say)
                        plan = plan_obj.to_dict()
                    if mode == "once" and plan_obj.forward.estimate is not None:
                        cfg = dataclasses.replace(cfg, estimate=plan_obj.forward.estimate)
                    try:
                        fmt, note = check_writable(out_path, out_format, overwrite, inputs=(lr_path, msi_path)), None
                    except OutputError as e:  # a dry run reports what the real run would refuse, and goes on
                        if "exists" not in e.message:
                            raise
                        fmt, note = out_format, e.message
                    record({"lr": str(lr_path), "msi": str(msi_path), "output": str(out_path),
                            "output_format": fmt, "plan": plan, "status": "planned",
                            **({"output_note": note} if note else {})})
                    if note:
                        say(f"{out_path}: {note}")
                    if not (json_out or jsonl):
                        _print_plan(lr_path, msi_path, out_path, plan)
                    continue
                bar, callback = _progress_bar(show_progress(quiet))
                with bar:
                    res = fuse_files(lr_path, msi_path, out_path, cfg, overwrite=overwrite, out_format=out_format,
                                     lr_opts=lr_opts, msi_opts=msi_opts, out_dtype=out_dtype, writer_opts=co_opts,
                                     progress=callback, notify=say)
                est = res.forward.estimate if res.forward is not None else None
                if mode == "once" and est is not None:
                    cfg = dataclasses.replace(cfg, estimate=est)  # the next pairs reuse it
                if save_estimate is not None and est is not None and not saved:
                    _save_estimate(save_estimate, est, lr_path, msi_path, overwrite)
                    saved = True
                say(f"{out_path}: {res.plan['model']} ({res.plan['model_reason']}), x{res.plan['scale']}, "
                    f"{res.plan['tiles']} tile(s) on {res.plan['device']}, {res.seconds:.2f} s "
                    f"({res.megapixels_per_second:.3g} MP/s)"
                    + (f"; the mean of {tta} network passes over the scene turned or flipped (-O tta=1: one)"
                       if (tta := int((res.model_info or {}).get("tta") or 1)) > 1 else "")
                    + (f"; LR consistency on ({(res.model_info or {}).get('lr_consistency')}, the PSF taken as exact; "
                       "-O lr_consistency=off skips it)" if (res.model_info or {}).get("lr_consistency") else ""))
                record({"lr": str(lr_path), "msi": str(msi_path), "output": res.output, "status": "ok",
                        "seconds": res.seconds, "megapixels_per_second": res.megapixels_per_second,
                        "plan": res.plan, "model_info": res.model_info})
            except HsfuseError as e:
                if len(jobs) == 1 and not (json_out or jsonl):
                    raise
                failed += 1
                exit_code = e.exit_code if len(jobs) == 1 else 1
                err.print(f"hsfuse: error: {e.oneline(flags=True)}", soft_wrap=True, markup=False)
                record({"lr": str(lr_path), "msi": str(msi_path), "output": str(out_path), "status": "failed",
                        "error": e.oneline(flags=True), "exit_code": e.exit_code})
                if not keep_going:
                    break
        if json_out:  # one schema whatever the number of pairs; one pair's fields also at the top level
            doc = {"pairs": results, "ok": sum(r["status"] != "failed" for r in results), "failed": failed,
                   "total": len(jobs)}
            emit_json({**results[0], **doc} if len(jobs) == 1 and results else doc)
        if failed:
            if not quiet and len(jobs) > 1:
                err.print(f"hsfuse: {failed} of {len(jobs)} pair(s) failed", markup=False)
            raise typer.Exit(exit_code)


def _set_threads(n: int) -> None:
    """Torch's CPU threads: ``n``, or the cores this process may run on (a container's or taskset's share,
    not the machine's: torch's default counts the machine's and oversubscribes)."""
    import os

    if n == 0:
        try:
            n = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            n = os.cpu_count() or 1
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(max(1, n))
    else:  # read by torch (and the BLAS) when first imported: planning and --dry-run do not import torch
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, n)))


def _save_estimate(path: Path, est, lr_path: Path, msi_path: Path, overwrite: bool) -> None:
    """The estimate as the JSON `hsfuse estimate -o` writes (``--psf F --srf F`` read it back), atomically."""
    from ..forward.blind import BlindEstimate, save_estimate as write_json

    if path.exists() and not overwrite:
        raise OutputError("exists (use --overwrite)", path)
    write_json(path, BlindEstimate.from_pair(est), extra={"inputs": {"lr": str(lr_path), "msi": str(msi_path)},
                                                          "estimate": est.describe()})


def _print_plan(lr: Path, msi: Path, out: Path, plan: dict) -> None:
    from rich.table import Table

    from .common import out as console

    t = Table(title=f"plan: {lr.name} + {msi.name} -> {out}", show_header=False)
    t.add_row("scale", f"x{plan['scale']}")
    t.add_row("LR / MSI / output", f"{plan['lr_shape']} / {plan['msi_shape']} / {plan['out_shape']} (C, H, W)")
    t.add_row("model", f"{plan['model']} ({plan['model_kind']}): {plan['model_reason']}")
    if plan.get("weights"):
        t.add_row("weights", plan["weights"])
    t.add_row("device", f"{plan['device']} ({plan['precision']})")
    t.add_row("tiles", f"{plan['tiles']} ({plan['tile_grid'][0]}x{plan['tile_grid'][1]}), tile {plan['tile_hr']} px, "
              f"overlap {plan['overlap_hr']} px")
    t.add_row("PSF", f"{plan['psf']['name']} ({plan['psf']['source']})")
    t.add_row("SRF", plan["srf"]["source"])
    console.print(t)
