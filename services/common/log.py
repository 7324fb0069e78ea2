"""structlog setup shared by every process: one event per line, key=value."""

from __future__ import annotations

import logging
import os
import sys

# structlog is imported without the optional packages its console renderer and its traceback
# prettifier look for at import time (rich, better_exceptions): the logfmt and JSON renderers
# here use neither, and rich cost every component's start 0.03-0.05 s (~0.1 s on a busy
# machine). Hidden only while structlog imports (`import rich` raises ImportError then):
# anything that wants rich later gets it.
_HIDDEN = [name for name in ("rich", "better_exceptions") if name not in sys.modules]
for _name in _HIDDEN:
    sys.modules[_name] = None  # type: ignore[assignment]
try:
    import structlog
finally:
    for _name in _HIDDEN:
        if _name in sys.modules and sys.modules[_name] is None:
            del sys.modules[_name]


def configure_logging(
    component: str, level: str | None = None, json: bool | None = None
) -> structlog.stdlib.BoundLogger:
    """Configures structlog for a process and returns its root logger.

    KYBERNETES_LOG_LEVEL and KYBERNETES_LOG_FORMAT=json override the defaults.
    """
    level_name = (level or os.environ.get("KYBERNETES_LOG_LEVEL", "info")).upper()
    use_json = json if json is not None else os.environ.get("KYBERNETES_LOG_FORMAT") == "json"
    renderer = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.processors.LogfmtRenderer(key_order=["timestamp", "level", "component", "event"])
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level_name, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # In the context (not one logger) so every module's logger carries it.
    structlog.contextvars.bind_contextvars(component=component)
    return structlog.get_logger()


def get_logger(**context: object) -> structlog.stdlib.BoundLogger:
    """A logger usable at import time: it binds to the configuration lazily."""
    return structlog.get_logger(**context)
