"""synthsae: a testbed for seed dependence in sparse autoencoders.

The public API (README, "Python API"): load SAEs from any supported folder, build a planted truth, train seeds,
analyse them, run the whole study, and read a run's typed results and verdicts. Names load on first use, so
`import synthsae` stays cheap; no public name is also a submodule's (`synthsae.train` is the trainer module).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {  # public name -> (module, attribute)
    "RunConfig": ("synthsae.config", "RunConfig"),
    "preset": ("synthsae.config", "preset"),
    "load_saes": ("synthsae.api", "load_saes"),
    "build_truth": ("synthsae.truth", "build_truth"),
    "train_seeds": ("synthsae.api", "train_seeds"),
    "analyze": ("synthsae.api", "analyze"),
    "run_study": ("synthsae.study", "run_study"),
    "read_results": ("synthsae.metrics_file", "read_metrics"),
    "read_verdicts": ("synthsae.api", "read_verdicts"),
    "open_source": ("synthsae.source", "open_source"),
}
__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'synthsae' has no attribute {name!r}")
    module, attr = _API[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
