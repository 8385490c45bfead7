"""The learner and ``msserve router eval --replay``: planted difficulty is found; the format and errors hold."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from server.cli.router import app
from server.routing import learn
from server.routing.embed import default_embedder
from server.routing.replay import replay
from server.routing.router import Router

runner = CliRunner()


def _planted(path: Path, n: int = 400, seed: int = 7, *, messages: bool = False) -> None:
    """A deployment where one kind of request (asks about a 'quaternion') is exactly where escalating helps.

    Filler prompts vary in length and wording as much as the planted ones, so only the topic tells them apart,
    and the prior knows nothing of it.
    """
    rng = random.Random(seed)
    topics = ["recipe", "holiday", "garden", "football", "poem", "email"]
    lines = []
    for i in range(n):
        hard = rng.random() < 0.3
        subject = "quaternion rotation matrix" if hard else rng.choice(topics)
        prompt = f"Question {i}: tell me about the {subject}. " + "Please explain. " * rng.randint(0, 6)
        weak, strong = (0.0, 1.0) if hard else rng.choice([(1.0, 1.0), (0.0, 0.0), (1.0, 0.0), (1.0, 1.0)])
        if hard and rng.random() < 0.1:
            weak, strong = 1.0, 1.0  # some noise
        item: dict[str, object] = {"weak": weak, "strong": strong}
        if messages:
            item["messages"] = [
                {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "hi"},
                {"role": "user", "content": prompt},
            ]
        else:
            item["prompt"] = prompt
        lines.append(json.dumps(item))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_replay_finds_planted_difficulty(tmp_path: Path) -> None:
    data = tmp_path / "deployment.jsonl"
    _planted(data)
    result = runner.invoke(app, ["eval", "--replay", str(data), "--labelled", "200", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)  # exactly one JSON object on stdout
    assert {"n", "labelled", "apgr_prior", "apgr_learned"} <= set(out)
    assert out["n"] == 400 and out["labelled"] == 200
    assert out["apgr_learned"] > out["apgr_prior"] + 0.15, out
    assert out["apgr_learned"] > 0.8, out
    assert not (tmp_path / "router-eval.png").exists() and not Path("router-eval.png").exists()


def test_replay_reads_messages_lines_too(tmp_path: Path) -> None:
    data = tmp_path / "chat.jsonl"
    _planted(data, messages=True)
    result = runner.invoke(app, ["eval", "--replay", str(data), "--labelled", "200", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["apgr_learned"] > out["apgr_prior"] + 0.15, out


@pytest.mark.parametrize("revealed", ["400", "401"])
def test_replay_refuses_n_at_or_above_the_file_length(tmp_path: Path, revealed: str) -> None:
    data = tmp_path / "d.jsonl"
    _planted(data)
    result = runner.invoke(app, ["eval", "--replay", str(data), "--labelled", revealed, "--json"])
    assert result.exit_code == 2
    assert "N must be < n" in result.output and result.stdout == ""


def test_replay_needs_labelled(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    _planted(data)
    result = runner.invoke(app, ["eval", "--replay", str(data)])
    assert result.exit_code == 2 and "--labelled" in result.output


def test_replay_text_output(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    _planted(data)
    result = runner.invoke(app, ["eval", "--replay", str(data), "--labelled", "100"])
    assert result.exit_code == 0, result.output
    assert "APGR on the other 300: prior" in result.stdout


def test_correction_moves_with_evidence_and_stays_home_without_it() -> None:
    """Same signal, more outcomes: the coefficient grows (the fixed pull weighs less); too few: no correction."""
    rng = random.Random(3)

    def samples(n: int) -> list[learn.Sample]:
        out = []
        for _ in range(n):
            x = rng.gauss(0, 1)
            label = 1.0 if rng.random() < 1 / (1 + 2.718 ** (-2 * x)) else 0.0
            out.append(learn.Sample(prior_logit=0.0, dense=[x, 1.0], label=label))
        return out

    assert not learn.fit(samples(learn.MIN_OUTCOMES - 1)).active
    assert not learn.fit([learn.Sample(0.0, [float(i), 1.0], 0.5) for i in range(100)]).active  # no spread
    small, large = learn.fit(samples(60)), learn.fit(samples(3000))
    assert small.active and large.active
    assert 0 < small.coef[1] < large.coef[1]
    assert small.coef[2] == 0.0  # a constant column never moves


def test_compiled_correction_matches_the_fitted_formula() -> None:
    rng = random.Random(5)
    data = [
        learn.Sample(rng.gauss(0, 1), [rng.gauss(0, 1) for _ in range(3)], rng.choice([0.0, 0.5, 1.0]))
        for _ in range(200)
    ]
    correction = learn.fit(data, penalty=5.0)
    compiled = correction.compiled()
    s = data[0]
    row = [s.prior_logit, *s.dense]
    by_hand = (
        s.prior_logit
        + correction.bias
        + sum(
            c * (v - m) / sc
            for c, v, m, sc in zip(correction.coef, row, correction.mean, correction.scale, strict=True)
        )
    )
    assert compiled.logit(s.prior_logit, s.dense, None) == pytest.approx(by_hand)


def test_embedding_is_used_when_installed(tmp_path: Path) -> None:
    embedder = default_embedder()
    if embedder is None:
        pytest.skip("wordllama is not installed")
    vector = embedder.embed(["quaternion", "rotation", "notaword"])
    assert len(vector) == 256 and abs(sum(v * v for v in vector) - 1.0) < 1e-4
    data = tmp_path / "d.jsonl"
    _planted(data)
    from server.routing.replay import load_file

    result = replay(load_file(data), 200, Router.from_weights(), embedder)
    assert result.embedding and result.apgr_learned > result.apgr_prior + 0.15


def test_jsonl_lines_may_hold_raw_line_separators(tmp_path: Path) -> None:
    """U+2028 is valid raw inside a JSON string; the loader splits lines on newlines only."""
    data = tmp_path / "d.jsonl"
    data.write_text(
        json.dumps({"prompt": "first\u2028part", "weak": 0, "strong": 1}, ensure_ascii=False)
        + "\n"
        + json.dumps({"messages": [{"role": "user", "content": "hi"}], "weak": 1, "strong": 1})
        + "\n",
        encoding="utf-8",
    )
    from server.routing.labelled import read_jsonl

    examples = read_jsonl(data)
    assert [e.prompt for e in examples] == ["first\u2028part", "hi"]
    assert examples[1].request_json() == {"messages": [{"role": "user", "content": "hi"}]}
