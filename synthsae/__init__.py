"""synthsae: a testbed for seed dependence in sparse autoencoders."""

__version__ = "0.1.0"
