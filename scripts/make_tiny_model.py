#!/usr/bin/env python3
"""Build the tiny demo model into models/ of this checkout (``make tiny-model``): see server/demo_model.py."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's server package, run from anywhere

from server.demo_model import main

if __name__ == "__main__":
    sys.exit(main())
