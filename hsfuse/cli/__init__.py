"""The ``hsfuse`` command line: a thin skin over the library.

One module per subcommand (rasterio's ``rio`` layout); each parses options,
calls library functions inside ``common.guard()`` and renders the result.
Heavy imports (torch, rasterio, h5py) happen inside the commands, so
``hsfuse --help`` stays instant.
"""

from __future__ import annotations

import signal
import typer

from .. import __version__

app = typer.Typer(
    name="hsfuse",
    help="Hyperspectral image super-resolution by fusion: LR hyperspectral + HR multispectral -> HR hyperspectral.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hsfuse {__version__}")
        raise typer.Exit()


def _versions(value: bool) -> None:
    if value:
        from .versions import print_versions

        print_versions()
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    versions: bool = typer.Option(False, "--versions", callback=_versions, is_eager=True,
                                  help="Print versions of hsfuse and its libraries (for bug reports) and exit."),
) -> None:
    """hsfuse: fuse a low-resolution hyperspectral cube with a high-resolution multispectral image."""


from . import degrade as _degrade  # noqa: E402
from . import demo as _demo  # noqa: E402
from . import estimate as _estimate  # noqa: E402
from . import fuse as _fuse  # noqa: E402
from . import info as _info  # noqa: E402
from . import metrics as _metrics  # noqa: E402
from . import models as _models  # noqa: E402
from . import train as _train  # noqa: E402

app.command("fuse")(_fuse.fuse)
app.command("degrade")(_degrade.degrade)
app.command("metrics")(_metrics.metrics)
app.command("train")(_train.train)
app.command("estimate")(_estimate.estimate)
app.command("info")(_info.info)
app.command("models")(_models.models)
app.command("demo")(_demo.demo)


def _sigterm(signum, frame):  # let writers clean up their temporary files
    raise KeyboardInterrupt


def main() -> None:
    import os
    import warnings

    signal.signal(signal.SIGTERM, _sigterm)
    if not os.environ.get("HSFUSE_DEBUG"):  # library warnings are not messages for users (HSFUSE_DEBUG=1 shows them)
        warnings.simplefilter("ignore")
    app()
