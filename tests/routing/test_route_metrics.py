import random

import pytest

from server.routing.metrics import apgr, cpt, evaluate, plot_curves, quality_curve


def test_hand_computed_example() -> None:
    # weak 2/4 right, strong 3/4; the top prompt is the only one strong fixes.
    result = evaluate([0.9, 0.8, 0.2, 0.1], [0, 1, 1, 0], [1, 1, 1, 0])
    assert result.weak_accuracy == 0.5 and result.strong_accuracy == 0.75
    # quality: 0.5 at c=0, 0.75 from c=0.25 on; area over weak = 0.03125 + 0.1875; gap 0.25
    assert result.apgr == pytest.approx(0.875)
    assert result.cpt50 == pytest.approx(0.125)
    assert result.cpt80 == pytest.approx(0.2)


def test_perfect_router_beats_random_and_constant_is_half() -> None:
    rng = random.Random(0)
    weak = [rng.random() < 0.6 for _ in range(2000)]
    strong = [w or rng.random() < 0.5 for w in weak]
    perfect = evaluate([float(s) - float(w) for w, s in zip(weak, strong, strict=False)], weak, strong)
    assert perfect.apgr > 0.9
    assert evaluate([0.3] * 2000, weak, strong).apgr == pytest.approx(0.5)  # all tied: the expected curve
    randoms = [evaluate([rng.random() for _ in weak], weak, strong).apgr for _ in range(5)]
    assert sum(randoms) / 5 == pytest.approx(0.5, abs=0.03)


def test_reversed_router_is_below_half() -> None:
    weak = [0, 1, 1, 0]
    strong = [1, 1, 1, 0]
    assert evaluate([0.1, 0.2, 0.8, 0.9], weak, strong).apgr < 0.5


def test_curve_endpoints_and_errors(tmp_path) -> None:
    curve = quality_curve([0.5, 0.4, 0.4], [1, 0, 0], [1, 1, 0])
    assert curve.calls[0] == 0.0 and curve.calls[-1] == 1.0
    assert curve.quality[0] == pytest.approx(1 / 3) and curve.quality[-1] == pytest.approx(2 / 3)
    assert cpt(curve, 0.0) == 0.0
    with pytest.raises(ValueError):
        quality_curve([], [], [])
    with pytest.raises(ValueError):
        apgr(quality_curve([1.0], [1], [0]))
    path = tmp_path / "c.png"
    plot_curves({"r": curve}, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
