"""Imports every shipped variant module so that each registers itself."""

from synthsae.sae import blocktopk, dense, topk  # noqa: F401

__all__ = ["blocktopk", "dense", "topk"]
