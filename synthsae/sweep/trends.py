"""The trend rule: does a claim's deciding number strengthen along an axis (width or layer)?

"Strengthens with width": along one line of cells that differ only in width, the deciding number's margin over its
null (value - null; the value alone when there is no null) rises from the narrowest to the widest cell by more than
the seeds' spread (the larger of the two cells' standard deviations over seeds). Measuring the margin, not the raw
number, keeps a rise that the null shows too (geometry alone) from counting. Fewer than two points, or no spread
at either end, is "not measured".
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrendPoint:
    x: float  # width (multiple or d_sae) or layer
    value: float | None
    null: float | None
    spread: float | None  # std over seeds


def margin(p: TrendPoint) -> float | None:
    if p.value is None:
        return None
    return p.value - p.null if p.null is not None else p.value


def trend_rule(points: list[TrendPoint]) -> tuple[str, str]:
    """(verdict, why): held when margin(last x) - margin(first x) > max(spread first, spread last); else did not hold."""
    pts = sorted((p for p in points if margin(p) is not None), key=lambda p: p.x)
    if len(pts) < 2 or pts[0].x == pts[-1].x:
        return "not measured", "fewer than two measured points along the axis"
    lo, hi = pts[0], pts[-1]
    if lo.spread is None or hi.spread is None:
        return "not measured", "no spread over seeds at the narrowest or widest point"
    rise = margin(hi) - margin(lo)
    spread = max(lo.spread, hi.spread)
    why = (f"margin over the null {margin(lo):.3f} at {lo.x:g} -> {margin(hi):.3f} at {hi.x:g}: rise {rise:+.3f} "
           f"vs seeds' spread {spread:.3f}")
    return ("held" if rise > spread else "did not hold"), why
