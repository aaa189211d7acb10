"""Log lines as component-base's JSON format writes them (`logging.format: json`): one object per
line with `ts` (milliseconds since the epoch), `caller` (folder/file:line), `msg`, and `v` (the
verbosity) for info lines or `err` for errors, compact as klog writes it, so log pipelines that
parse kube-proxy's JSON logs parse pyproxy's."""

from __future__ import annotations

import json
import logging
import os


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        folder = os.path.basename(os.path.dirname(record.pathname))
        out: dict = {"ts": record.created * 1000, "caller": f"{folder}/{record.filename}:{record.lineno}",
                     "msg": record.getMessage()}
        if record.levelno >= logging.ERROR:
            out["err"] = self.formatException(record.exc_info) if record.exc_info else record.getMessage()
        else:
            out["v"] = 4 if record.levelno <= logging.DEBUG else 0
        return json.dumps(out, separators=(",", ":"))
