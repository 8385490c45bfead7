"""Keep third-party HTTP clients from logging what MSSERVE_LOG_CONTENTS says must not be logged.

At debug level the openai SDK logs every request's options, the JSON body included ("Request options: ..."),
so a server run with ``MSSERVE_LOG_LEVEL=debug`` would write every prompt escalated to Azure, images as
base64, whatever ``MSSERVE_LOG_CONTENTS`` says. Its loggers are held at INFO unless contents may be logged;
httpx/httpcore log one line per call at INFO and connection traces at DEBUG, and are held at WARNING.
"""

from __future__ import annotations

import logging

BODY_LOGGERS = ("openai",)  # debug records carry request bodies
CHATTY_LOGGERS = ("httpx", "httpx2", "httpcore")  # one INFO line per Azure call would drown the request log


def quiet_sdk_loggers(log_contents: bool) -> None:
    root = logging.getLogger().getEffectiveLevel()
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root))
    for name in BODY_LOGGERS:
        # NOTSET: follow the root level again (debug bodies included), only when contents may be logged.
        logging.getLogger(name).setLevel(logging.NOTSET if log_contents else max(logging.INFO, root))
