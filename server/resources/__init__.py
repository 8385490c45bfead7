"""Where the server's files are: data shipped in the package, the source checkout (if any), the cache.

The model profiles (``profiles/*.yaml``) and the router weights (``router/``) ship inside the package, so a wheel
install has them; they are found through ``importlib.resources``, never relative to a repository. Users' own
profiles live in ``MSSERVE_PROFILES_DIR`` (server.config looks there first).
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path


def packaged(*parts: str) -> Path:
    """A file or folder shipped in this package, as a path on disk."""
    ref = files(__name__).joinpath(*parts)
    if not isinstance(ref, Path):
        # A zipped install (zipimport) has no paths; the engines and the router need real files.
        raise RuntimeError(f"msserve must be installed as files on disk, not zipped: {ref} is not a path")
    return ref


PROFILES_DIR = packaged("profiles")
ROUTER_DIR = packaged("router")
# The router weights the server uses unless MSSERVE_ROUTER_WEIGHTS names others. Retrained weights go in
# ROUTER_DIR, with their card (CARD.md) beside them; point this name at the new file.
ROUTER_WEIGHTS = ROUTER_DIR / "task-lr-v2.json"

_PACKAGE_PARENT = Path(__file__).resolve().parents[2]


def source_checkout() -> Path | None:
    """The repository root when this package runs from a source checkout (editable install or PYTHONPATH).

    A wheel install puts the package in site-packages, beside no pyproject.toml or scripts/: None then.
    """
    root = _PACKAGE_PARENT
    return root if (root / "pyproject.toml").is_file() and (root / "scripts").is_dir() else None


def cache_dir() -> Path:
    """msserve's cache folder (the demo model is built there outside a checkout): $XDG_CACHE_HOME/msserve."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "msserve"
