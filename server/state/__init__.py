"""State that must outlive a request: the embedded SQLite database under ``MSSERVE_STATE_DIR``."""

from server.state.db import StateDB, default_state_dir

__all__ = ["StateDB", "default_state_dir"]
