"""The `synthsae` command line: thin wrappers over the library, one command per step of the study.

Each module holds one group of commands and a `register(app)`; this module builds `app` from them, in --help order.
Errors in user input (flags, config files, run folders) print one line and exit with code 2.
"""

from __future__ import annotations

import typer

from synthsae.cli import analyze, atlas, bench, real, run, sweep, train, truth
from synthsae.cli.common import HELP, new_app, print_version

app = new_app(HELP)


@app.callback()
def main(
    show_version: bool = typer.Option(False, "--version", callback=print_version, is_eager=True,
                                      help="print the version and exit"),
) -> None:
    """Seed dependence in sparse autoencoders: train SAEs under many seeds, measure which latents come back."""


for group in (truth, train, analyze, run, atlas, real, bench, sweep):
    group.register(app)
