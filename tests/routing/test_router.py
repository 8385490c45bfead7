import json

import pytest

from server.config import Settings
from server.errors import InvalidRequestError, RouterConfigError
from server.routing.inputs import request_from_json, request_from_prompt
from server.routing.model import RouterModel, Weights, quantiles_of, rate_above, threshold_for_rate
from server.routing.router import DEFAULT_WEIGHTS, Router

HARD = (
    "A store sells pencils at 3 for $0.75 and pens at 2 for $1.90. Maria buys 18 pencils and 7 pens, pays with a "
    "$20 bill and gets a 15% discount on the pens. How much change does she get?"
)
EASY = "What is the capital of France?"
IMAGE = {
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "describe"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        }
    ]
}


@pytest.fixture(scope="module")
def model() -> RouterModel:
    return RouterModel.load(DEFAULT_WEIGHTS)


def test_shipped_weights_rank_a_hard_prompt_above_an_easy_one(model: RouterModel) -> None:
    router = Router(model, target_rate=0.5)
    hard = router.decide(request_from_prompt(HARD))
    easy = router.decide(request_from_prompt(EASY))
    assert hard.score is not None and easy.score is not None
    assert 0.0 <= easy.score < hard.score <= 1.0
    assert hard.tier == "azure" and hard.reason_class == "score-high"
    assert easy.tier == "local" and easy.reason_class == "score-low"
    assert f"> threshold {router.threshold:.2f}" in hard.reason
    assert "<= threshold" in easy.reason
    # Reasons name the task and its signals, never a list of stop words.
    assert hard.reason.startswith("multi-step math: ") and "quantities" in hard.reason
    assert easy.reason.startswith("general question: ")


@pytest.mark.parametrize(
    ("harder", "easier"),
    [
        ("Prove that there are infinitely many primes.", "hi"),
        ("Implement a thread-safe LRU cache in Python with O(1) get and put, and explain the locking.", "thanks!"),
        ("If 3 workers build 2 walls in 5 days, how many days do 9 workers need for 12 walls?", "What is 2 + 2?"),
        ("Explain the difference between TCP and UDP.", "Write a haiku about rain."),
    ],
)
def test_harder_tasks_score_above_easier_ones(model: RouterModel, harder: str, easier: str) -> None:
    router = Router(model)
    assert router.score(request_from_prompt(harder))[1].score > router.score(request_from_prompt(easier))[1].score


def test_threshold_decides(model: RouterModel) -> None:
    request = request_from_prompt(HARD)
    score = Router(model).decide(request).score
    assert score is not None
    assert Router(model, threshold=max(0.0, score - 0.01)).decide(request).tier == "azure"
    assert Router(model, threshold=min(1.0, score + 0.01)).decide(request).tier == "local"


def test_target_rate_uses_reference_quantiles(model: RouterModel) -> None:
    low = Router(model, target_rate=0.1).threshold
    high = Router(model, target_rate=0.5).threshold
    assert high < low  # escalating more needs a lower threshold
    assert Router(model, target_rate=0.3, threshold=0.9).threshold == 0.9  # explicit threshold wins
    assert Router(model).threshold == model.weights.default_threshold
    with pytest.raises(RouterConfigError):
        Router(model, target_rate=1.5)


def test_threshold_for_rate_inverts_quantiles() -> None:
    scores = [i / 999 for i in range(1000)]
    quantiles = quantiles_of(scores)
    for rate in (0.1, 0.3, 0.75):
        assert rate_above(scores, threshold_for_rate(quantiles, rate)) == pytest.approx(rate, abs=0.002)


def test_override_wins_and_says_so(model: RouterModel) -> None:
    router = Router(model, threshold=0.0)
    decision = router.decide(request_from_prompt(EASY), override="local")
    assert decision.tier == "local" and decision.reason_class == "override"
    assert "x-msserve-route: local" in decision.reason
    assert router.decide(request_from_prompt(EASY), override="auto").reason_class == "score-high"
    with pytest.raises(InvalidRequestError):
        router.decide(request_from_prompt(EASY), override="sideways")  # type: ignore[arg-type]


@pytest.mark.parametrize("policy", ["local", "azure"])
def test_image_policy_forces_tier(model: RouterModel, policy: str) -> None:
    decision = Router(model, image_policy=policy).decide(request_from_json(IMAGE))  # type: ignore[arg-type]
    assert decision.tier == policy and decision.reason_class == "images-policy"
    assert "1 image" in decision.reason
    text_only = Router(model, image_policy=policy).decide(request_from_prompt(EASY))  # type: ignore[arg-type]
    assert text_only.reason_class.startswith("score")


def test_priors_for_unseen_shape_raise_the_score(model: RouterModel) -> None:
    router = Router(model)
    plain = router.decide(request_from_json({"messages": [{"role": "user", "content": EASY}]}))
    agentic = router.decide(
        request_from_json(
            {
                "messages": [{"role": "user", "content": EASY}],
                "tools": [{"type": "function", "function": {"name": f"t{i}"}} for i in range(4)],
                "response_format": {"type": "json_object"},
            }
        )
    )
    assert agentic.score is not None and plain.score is not None and agentic.score > plain.score


def test_from_settings(tmp_path, model: RouterModel) -> None:
    path = tmp_path / "w.json"
    path.write_text(json.dumps(model.weights.model_dump()))
    settings = Settings(router_weights=path, router_target_rate=0.2, router_image_policy="local")
    router = Router.from_settings(settings)
    assert router.image_policy == "local"
    assert router.threshold == pytest.approx(model.threshold_for_rate(0.2))


def test_bad_weights_are_rejected(tmp_path, model: RouterModel) -> None:
    with pytest.raises(RouterConfigError, match="not found"):
        RouterModel.load(tmp_path / "missing.json")
    data = model.weights.model_dump()
    del data["features"]["quantities"]
    with pytest.raises(RouterConfigError, match="lack features: quantities"):
        RouterModel(Weights.model_validate(data))
