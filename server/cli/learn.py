"""``msserve router learn`` and ``msserve router rollback``: refit from stored outcomes, or go back one version.

Both read the server's settings (``MSSERVE_STATE_DIR``, ``MSSERVE_ROUTER_WEIGHTS``, ``MSSERVE_ROUTER_TARGET_RATE``,
``MSSERVE_REDIS_URL``) and work on the state database a running server writes to (SQLite in WAL mode: safe while it
runs). With ``MSSERVE_REDIS_URL`` set, ``learn`` reads the outcomes of every replica from Redis; the weights it
writes still go to this state folder. A running server picks the result up on ``POST /admin/router/reload`` or
SIGHUP.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from server.config import Settings
from server.errors import StartupError
from server.routing import embed
from server.routing.learned import WeightsRegistry, router_for
from server.routing.outcomes import open_outcome_store
from server.routing.refit import NotEnoughOutcomes, refit
from server.state.db import StateDB, default_state_dir

StateOption = Annotated[Path | None, typer.Option("--state-dir", help="default: MSSERVE_STATE_DIR")]


def _state(state_dir: Path | None) -> tuple[Settings, Path, StateDB]:
    settings = Settings()
    folder = state_dir or settings.state_dir or default_state_dir()
    return settings, folder, StateDB(folder)


def learn(state_dir: StateOption = None) -> None:
    """Refit the router from the stored outcomes; write learned-vN.json and its card; make it current."""
    settings, folder, db = _state(state_dir)
    store = open_outcome_store(settings, db)  # every replica's outcomes when MSSERVE_REDIS_URL is set
    try:
        registry = WeightsRegistry(db, folder)
        try:
            current = router_for(settings, registry)
            weights, card = refit(
                store.all(),
                current=current,
                prior_path=settings.router_weights,
                version=registry.next_version(),
                target_rate=settings.router_target_rate,
                embedder=embed.default_embedder(),
            )
        except (NotEnoughOutcomes, StartupError) as exc:  # too few outcomes, or prior weights that will not load
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=2) from exc
        path = registry.publish(weights, card)
    finally:
        store.close()
        db.close()
    typer.echo(card)
    typer.echo(f"wrote {path} (now current; reload a running server: POST /admin/router/reload or SIGHUP)")


def rollback(state_dir: StateOption = None) -> None:
    """Retire the learned weights in use; the previous version (or the shipped prior) serves again."""
    _, folder, db = _state(state_dir)
    try:
        try:
            version = WeightsRegistry(db, folder).rollback()
        except LookupError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=2) from exc
    finally:
        db.close()
    now = f"learned-v{version}" if version is not None else "the shipped prior"
    typer.echo(f"rolled back: {now} is current (reload a running server: POST /admin/router/reload or SIGHUP)")
