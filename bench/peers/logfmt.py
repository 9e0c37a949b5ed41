"""A stdlib JSON log formatter for the peers that are not chanx (logging job).

The same output as ``chanx.JsonFormatter`` (time, level, logger, message and
every ``extra`` field, one JSON object per line), written the way a Channels
project would, so the logging job compares the same formatting work.
"""

import json
import logging

_RESERVED = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, self.datefmt),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED:
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)
