import json

import pytest
from typer.testing import CliRunner

from server.cli.router import app

runner = CliRunner()


def test_score_writes_one_line_per_input(tmp_path) -> None:
    path = tmp_path / "in.jsonl"
    lines = [
        {"prompt": "What is 2 + 2?"},
        {"messages": [{"role": "user", "content": "Prove that there are infinitely many primes, step by step."}]},
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    ],
                }
            ]
        },
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    result = runner.invoke(app, ["score", str(path), "--image-policy", "azure"])
    assert result.exit_code == 0, result.output
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(out) == 3
    for item in out:
        assert set(item) == {"score", "tier", "reason"}
        assert 0.0 <= item["score"] <= 1.0
        assert item["tier"] in ("local", "azure")
    assert out[2]["tier"] == "azure" and "image" in out[2]["reason"]


def test_score_reports_bad_lines(tmp_path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok"}\n{"messages": []}\n')
    result = runner.invoke(app, ["score", str(path)])
    assert result.exit_code == 2
    assert "line 2" in result.output


def _labelled_csv(path) -> None:
    rows = ["prompt,weak-model,strong-model"]
    # Long, negatively framed prompts are where the strong model helps in this toy set.
    for i in range(20):
        rows.append(
            f'"Which of these is NOT true, and why not? Case {i} is a long story. ' + "x " * 200 + '",False,True'
        )
        rows.append(f'"What is {i} plus one?",True,True')
    path.write_text("\n".join(rows) + "\n")


def test_eval_prints_metrics_and_draws_the_curve(tmp_path) -> None:
    data = tmp_path / "mmlu_toy.csv"
    _labelled_csv(data)
    (tmp_path / "contaminated_prompts.jsonl").write_text(json.dumps({"eval_prompt": "What is 0 plus one?"}) + "\n")
    plot = tmp_path / "curve.png"
    result = runner.invoke(app, ["eval", str(tmp_path), "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert "examples: 39" in result.output
    apgr = float(next(line for line in result.output.splitlines() if line.startswith("APGR")).split()[1])
    # The router puts the 20 long, negated prompts first: the best curve there is, 1 - (20 / 39) / 2.
    assert apgr == pytest.approx(1 - 10 / 39, abs=1e-3)
    assert "CPT(50%)" in result.output and "CPT(80%)" in result.output
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_eval_jsonl(tmp_path) -> None:
    data = tmp_path / "l.jsonl"
    data.write_text(
        "\n".join(json.dumps({"prompt": f"q{i}", "weak": i % 2 == 0, "strong": True}) for i in range(10)) + "\n"
    )
    result = runner.invoke(app, ["eval", str(data), "--plot", str(tmp_path / "p.png")])
    assert result.exit_code == 0, result.output
    assert "weak accuracy   0.5000" in result.output


def test_calibrate_hits_the_target_rate(tmp_path) -> None:
    path = tmp_path / "traffic.jsonl"
    prompts = ["Question: " + "x" * (40 + 2 * i) for i in range(100)]  # distinct lengths under the cap
    path.write_text("\n".join(json.dumps({"prompt": p}) for p in prompts) + "\n")
    result = runner.invoke(app, ["calibrate", "--target-rate", "0.3", str(path)])
    assert result.exit_code == 0, result.output
    assert "escalates 30.0% of them" in result.output
    threshold = float(result.output.split("MSSERVE_ROUTER_THRESHOLD=")[1])
    scored = runner.invoke(app, ["score", str(path), "--threshold", str(threshold)])
    tiers = [json.loads(line)["tier"] for line in scored.stdout.splitlines()]
    assert tiers.count("azure") == 30
