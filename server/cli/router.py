"""``msserve router``: score requests, evaluate the router on labelled data, calibrate a threshold.

Offline tools: nothing here talks to a model or the network.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, TextIO

import typer

from server.cli import learn
from server.errors import MSServeError, StartupError
from server.routing import labelled, metrics, replay
from server.routing.inputs import request_from_json, request_from_prompt
from server.routing.learned import LearnedRouter, router_from_file
from server.routing.model import RouterModel, quantiles_of, rate_above, threshold_for_rate
from server.routing.router import DEFAULT_WEIGHTS, ImagePolicy, Router

app = typer.Typer(help="Score, evaluate and calibrate the Azure escalation router.", no_args_is_help=True)

WeightsOption = Annotated[
    Path, typer.Option("--weights", help="router weights JSON: the shipped prior (default), other, or learned-vN.json")
]
ThresholdOption = Annotated[float | None, typer.Option("--threshold", help="escalate when score > threshold")]
RateOption = Annotated[
    float | None, typer.Option("--target-rate", help="escalate this share (threshold from the weights' quantiles)")
]


def _fail(error: Exception) -> typer.Exit:
    typer.echo(f"error: {error}", err=True)
    return typer.Exit(code=2)


def _lines(handle: TextIO) -> Iterator[tuple[int, dict[str, object]]]:
    for number, line in enumerate(handle, start=1):
        if line.strip():
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                raise MSServeError(f"line {number}: not JSON ({exc.msg})", code="invalid_line") from exc


def _open(file: Path) -> TextIO:
    return sys.stdin if str(file) == "-" else file.open(encoding="utf-8")


@app.command()
def score(
    file: Annotated[Path, typer.Argument(help="JSONL: {'messages': [...]} or {'prompt': ...} per line; '-' for stdin")],
    weights: WeightsOption = DEFAULT_WEIGHTS,
    threshold: ThresholdOption = None,
    target_rate: RateOption = None,
    image_policy: Annotated[str, typer.Option(help="score | local | azure")] = "score",
) -> None:
    """Write one JSON line per input: {"score", "tier", "reason"}."""
    try:
        policy: ImagePolicy = image_policy  # type: ignore[assignment]
        router = router_from_file(weights, threshold=threshold, target_rate=target_rate, image_policy=policy)
        with _open(file) as handle:
            for number, item in _lines(handle):
                try:
                    decision = router.decide(request_from_json(item, request_id=f"line-{number}"))
                except MSServeError as exc:
                    raise MSServeError(f"line {number}: {exc.message}", code=exc.code) from exc
                line = {"score": decision.score, "tier": decision.tier, "reason": decision.reason}
                typer.echo(json.dumps(line, ensure_ascii=False))
    except (MSServeError, StartupError) as exc:
        raise _fail(exc) from exc


@app.command("eval")
def eval_(
    files: Annotated[
        list[Path] | None,
        typer.Argument(help="labelled CSV (RouteLLM format), JSONL (prompt or messages, weak, strong), or a folder"),
    ] = None,
    weights: WeightsOption = DEFAULT_WEIGHTS,
    threshold: ThresholdOption = None,
    plot: Annotated[Path | None, typer.Option(help="PNG of quality vs share of strong calls")] = Path(
        "router-eval.png"
    ),
    keep_contaminated: Annotated[bool, typer.Option(help="also score prompts listed as contaminated")] = False,
    replay_file: Annotated[
        Path | None,
        typer.Option("--replay", help="one deployment's labelled traffic: reveal --labelled lines, refit, score rest"),
    ] = None,
    revealed: Annotated[
        int | None, typer.Option("--labelled", help="with --replay: lines revealed to the learner (first N in order)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="with --replay: one JSON object on stdout")] = False,
) -> None:
    """Print APGR, CPT(50%) and CPT(80%), and draw the quality-vs-strong-calls curve; or --replay learning."""
    if replay_file is not None:
        _replay(replay_file, revealed, weights, as_json)
        return
    if not files:
        raise _fail(MSServeError("give labelled files or folders, or --replay FILE --labelled N", code="invalid_args"))
    try:
        router = router_from_file(weights, threshold=threshold)
        examples, contaminated = labelled.load(files)
        if not keep_contaminated:
            examples = [e for e in examples if e.prompt not in contaminated]
        if not examples:
            raise MSServeError("no labelled examples found", code="invalid_label_file")
        scores = [router.score(request_from_json(e.request_json()))[1].score for e in examples]
        weak = [e.weak for e in examples]
        strong = [e.strong for e in examples]
        result = metrics.evaluate(scores, weak, strong)
    except (MSServeError, StartupError, ValueError) as exc:
        raise _fail(exc) from exc
    left_out = f" ({len(contaminated)} contaminated prompts left out)" if contaminated and not keep_contaminated else ""
    typer.echo(f"weights: {getattr(router, 'name', router.model.name)}; examples: {result.n}{left_out}")
    typer.echo(f"weak accuracy   {result.weak_accuracy:.4f}")
    typer.echo(f"strong accuracy {result.strong_accuracy:.4f}")
    typer.echo(f"APGR            {result.apgr:.4f}   (random 0.5)")
    typer.echo(f"CPT(50%)        {result.cpt50:.2%}")
    typer.echo(f"CPT(80%)        {result.cpt80:.2%}")
    chosen = [s if score > router.threshold else w for score, w, s in zip(scores, weak, strong, strict=True)]
    typer.echo(
        f"at threshold {router.threshold:.3f}: {rate_above(scores, router.threshold):.1%} escalated, "
        f"accuracy {sum(chosen) / len(chosen):.4f}"
    )
    if plot is not None:
        curve = metrics.quality_curve(scores, weak, strong)
        metrics.plot_curves(
            {router.model.name: curve}, plot, title=f"router {router.model.name}: APGR {result.apgr:.3f}"
        )
        typer.echo(f"curve: {plot}")


def _replay(file: Path, revealed: int | None, weights: Path, as_json: bool) -> None:
    from server.routing.embed import default_embedder

    try:
        if revealed is None:
            raise MSServeError("--replay needs --labelled N", code="invalid_labelled")
        prior = router_from_file(weights)
        prior = Router(prior.model) if isinstance(prior, LearnedRouter) else prior  # replay always refits a prior
        result = replay.replay(replay.load_file(file), revealed, prior, default_embedder())
    except (MSServeError, StartupError) as exc:
        raise _fail(exc) from exc
    if as_json:
        typer.echo(result.model_dump_json())
        return
    typer.echo(f"replay {file}: n={result.n}, first {result.labelled} lines revealed {result.revealed}")
    typer.echo(f"APGR on the other {result.n - result.labelled}: prior {result.apgr_prior:.4f}, "
               f"learned {result.apgr_learned:.4f} ({result.apgr_learned - result.apgr_prior:+.4f})")


@app.command()
def calibrate(
    file: Annotated[Path, typer.Argument(help="requests like your traffic: JSONL as for 'score', or labelled CSV")],
    target_rate: Annotated[float, typer.Option("--target-rate", min=0.0, max=1.0, help="share to send to Azure")],
    weights: WeightsOption = DEFAULT_WEIGHTS,
) -> None:
    """Find the threshold that escalates --target-rate of the requests in FILE."""
    try:
        model = RouterModel.load(weights)
        router = Router(model)
        if file.suffix == ".csv":
            requests = [request_from_prompt(e.prompt) for e in labelled.read_csv(file)]
        else:
            with _open(file) as handle:
                requests = [request_from_json(item, f"line-{n}") for n, item in _lines(handle)]
        if not requests:
            raise MSServeError(f"{file}: no requests", code="invalid_line")
        scores = [router.score(request)[1].score for request in requests]
    except (MSServeError, StartupError) as exc:
        raise _fail(exc) from exc
    threshold = round(threshold_for_rate(quantiles_of(scores, k=min(1000, len(scores))), target_rate), 6)
    typer.echo(f"requests: {len(scores)}; target escalation rate {target_rate:.1%}")
    typer.echo(f"threshold {threshold} escalates {rate_above(scores, threshold):.1%} of them")
    typer.echo(f"MSSERVE_ROUTER_THRESHOLD={threshold}")


app.command("learn")(learn.learn)
app.command("rollback")(learn.rollback)
