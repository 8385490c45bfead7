"""Run the real app (all middleware, telemetry, shutdown handling) with a PacedEngine, as its own process.

    python tests/ops/scripted_server.py PORT
    (settings from MSSERVE_*; OPS_CHUNKS, OPS_DELAY_S, OPS_LOAD_S, OPS_GATE_FILE for the engine)

The operations tests need a server they can flood, SIGTERM and measure without a model in the way; it is
served by ``server.serving.serve_until_signal``, the same function ``msserve serve`` uses.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from server.app import create_app
from server.config import Settings
from server.serving import serve_until_signal
from tests.ops.paced_engine import PacedEngine


def main() -> None:
    settings = Settings(host="127.0.0.1", port=int(sys.argv[1]))
    engine = PacedEngine(chunks=int(os.environ.get("OPS_CHUNKS", "5")),
                         delay_s=float(os.environ.get("OPS_DELAY_S", "0")),
                         load_s=float(os.environ.get("OPS_LOAD_S", "0")),
                         gate=Path(os.environ["OPS_GATE_FILE"]) if os.environ.get("OPS_GATE_FILE") else None)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve_until_signal(create_app(settings, engine=engine), settings)


if __name__ == "__main__":
    main()
