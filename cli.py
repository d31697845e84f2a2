"""The `synthsae` entry point (pyproject's `synthsae = "cli:app"`); the commands live in synthsae/cli/."""

import sys

from synthsae.cli import app
from synthsae.cli.common import UserError, user_errors

__all__ = ["app", "UserError", "user_errors"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
