"""Router quality the way RouteLLM (arXiv 2406.18665) measures it: quality against the share of strong calls.

Sort prompts by router score, send the top share ``c`` to the strong model and the rest to the weak one;
quality(c) is the mean correctness of the answers chosen. APGR is the area between that curve and the weak
model's line over the gap between the strong and weak lines (random scores: 0.5). CPT(x) is the smallest share of
strong calls whose quality recovers a fraction x of the gap.

Equal scores form one block whose order is left to chance: the curve is the expected one, a straight line across
the block, so a constant router scores exactly 0.5 and no tie-breaking rule can flatter a router.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Curve:
    calls: list[float]  # share of prompts sent to the strong model, from 0 to 1
    quality: list[float]  # mean correctness at that share
    weak: float  # weak model alone (calls = 0)
    strong: float  # strong model alone (calls = 1)


@dataclass(frozen=True)
class RouterMetrics:
    n: int
    weak_accuracy: float
    strong_accuracy: float
    apgr: float
    cpt50: float  # share of strong calls for 50% of the gap
    cpt80: float

    def summary(self) -> str:
        return (
            f"n={self.n} weak={self.weak_accuracy:.3f} strong={self.strong_accuracy:.3f} "
            f"APGR={self.apgr:.3f} CPT(50%)={self.cpt50:.1%} CPT(80%)={self.cpt80:.1%}"
        )


def quality_curve(scores: Sequence[float], weak: Sequence[bool | float], strong: Sequence[bool | float]) -> Curve:
    n = len(scores)
    if n == 0 or len(weak) != n or len(strong) != n:
        raise ValueError("scores, weak and strong must be non-empty and of equal length")
    order = sorted(range(n), key=lambda i: scores[i], reverse=True)
    weak_total = float(sum(weak))
    quality = weak_total / n
    calls, qualities = [0.0], [quality]
    start = 0
    while start < n:
        end = start
        gain = 0.0
        # One block of equal scores moves to the strong model together (straight line: the expected curve).
        while end < n and scores[order[end]] == scores[order[start]]:
            gain += float(strong[order[end]]) - float(weak[order[end]])
            end += 1
        quality += gain / n
        calls.append(end / n)
        qualities.append(quality)
        start = end
    return Curve(calls=calls, quality=qualities, weak=weak_total / n, strong=float(sum(strong)) / n)


def apgr(curve: Curve) -> float:
    gap = curve.strong - curve.weak
    if gap <= 0:
        raise ValueError("APGR needs a strong model that beats the weak one")
    area = 0.0
    for i in range(1, len(curve.calls)):
        width = curve.calls[i] - curve.calls[i - 1]
        area += width * ((curve.quality[i] + curve.quality[i - 1]) / 2 - curve.weak)
    return area / gap


def cpt(curve: Curve, recovered: float) -> float:
    """Smallest share of strong calls at which quality recovers ``recovered`` (0..1) of the gap."""
    target = curve.weak + recovered * (curve.strong - curve.weak)
    if curve.quality[0] >= target:
        return 0.0
    for i in range(1, len(curve.calls)):
        q0, q1 = curve.quality[i - 1], curve.quality[i]
        if q1 >= target:  # first crossing: q0 < target here
            return curve.calls[i - 1] + (target - q0) / (q1 - q0) * (curve.calls[i] - curve.calls[i - 1])
    return 1.0


def evaluate(scores: Sequence[float], weak: Sequence[bool | float], strong: Sequence[bool | float]) -> RouterMetrics:
    curve = quality_curve(scores, weak, strong)
    return RouterMetrics(
        n=len(scores),
        weak_accuracy=curve.weak,
        strong_accuracy=curve.strong,
        apgr=apgr(curve),
        cpt50=cpt(curve, 0.5),
        cpt80=cpt(curve, 0.8),
    )


_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]


def plot_curves(curves: dict[str, Curve], path: Path, title: str = "quality vs strong calls") -> None:
    """Draw quality against the share of strong calls (PNG, with Pillow), with the weak/strong/random lines."""
    from PIL import Image, ImageDraw

    width, height, margin = 720, 480, 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    first = next(iter(curves.values()))
    low = min(min(c.quality) for c in curves.values())
    high = max(max(c.quality) for c in curves.values())
    pad = (high - low) * 0.05 or 0.01
    low, high = low - pad, high + pad

    def xy(call: float, quality: float) -> tuple[float, float]:
        x = margin + call * (width - 2 * margin)
        y = height - margin - (quality - low) / (high - low) * (height - 2 * margin)
        return x, y

    draw.rectangle([xy(0, high), xy(1, low)], outline="black")
    for tick in range(0, 11, 2):
        x, y = xy(tick / 10, low)
        draw.text((x - 10, y + 6), f"{tick * 10}%", fill="black")
    for quality in (low + pad, (low + high) / 2, high - pad):
        x, y = xy(0, quality)
        draw.text((x - 45, y - 6), f"{quality:.3f}", fill="black")
    draw.line([xy(0, first.weak), xy(1, first.weak)], fill=(150, 150, 150))
    draw.line([xy(0, first.strong), xy(1, first.strong)], fill=(150, 150, 150))
    draw.line([xy(0, first.weak), xy(1, first.strong)], fill=(190, 190, 190))  # random router
    draw.text(xy(0.01, first.weak), "weak", fill="gray")
    draw.text(xy(0.01, first.strong), "strong", fill="gray")
    for index, (name, curve) in enumerate(curves.items()):
        colour = _COLOURS[index % len(_COLOURS)]
        points = [xy(c, q) for c, q in zip(curve.calls, curve.quality, strict=True)]
        draw.line(points, fill=colour, width=2)
        draw.text((width - margin - 200, height - margin - 20 - 14 * index), name, fill=colour)
    draw.text((width / 2 - 60, height - margin / 2), "share of strong calls", fill="black")
    draw.text((margin, margin / 3), title, fill="black")
    image.save(path, format="PNG")
