"""Keep personal data out of the logs.

Search URLs carry names and resident identity numbers (``Patient?identifier=...|6401...``), so
the access log writes each request's path without its query string. Error logs carry types
and paths, and the database engine hides statement parameters (``health.core.database``).
"""

from __future__ import annotations

import copy
import logging
from typing import Any


class DropQueryStrings(logging.Filter):
    """For uvicorn's access log: its records' third argument is the path with the query."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            path, question, _query = args[2].partition("?")
            if question:
                record.args = (*args[:2], f"{path}?…", *args[3:])
        return True


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's own logging configuration with :class:`DropQueryStrings` on the access log."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["drop_query_strings"] = {"()": DropQueryStrings}
    config["handlers"]["access"]["filters"] = ["drop_query_strings"]
    return config
