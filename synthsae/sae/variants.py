"""Imports every shipped variant so that each registers itself (placeholder until the trainer lands)."""
