"""`synthsae sweep`: a grid of ordinary run folders (widths, layers, models, variants, seeds), a verdict map and
the trends of each claim's deciding number; see docs/sweep.md."""

from synthsae.sweep.grid import Cell, Grid, cells, load_grid
from synthsae.sweep.presets import PRESETS, grid_preset
from synthsae.sweep.run import run_cell, run_sweep

__all__ = ["Cell", "Grid", "PRESETS", "cells", "grid_preset", "load_grid", "run_cell", "run_sweep"]
