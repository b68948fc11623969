"""Credentials never reach output: `https://user:secret@host/...` is shown as `https://***@host/...`.

Applied where messages are made (every URL we put in an error message: mirror, PREFECT_API_URL,
MLflow's tracking URI) and, as the one guard for everything else, to every log record this process
creates (`redact_logs`): a record's message and traceback are redacted before any handler — the
console, a log file, Prefect's API handler — sees them.
"""

from __future__ import annotations

import base64
import logging
import re
import traceback
from urllib.parse import unquote, urlsplit, urlunsplit

# scheme://userinfo@ — userinfo is everything up to the last '@' before the host's '/', '?' or '#'.
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#\s@]*(?:@[^/?#\s@]*)*@")


def redact(text: str) -> str:
    """`text` with the user:password part of every URL in it replaced by `***`."""
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}***@", str(text))


def split_credentials(url: str) -> tuple[str, str | None]:
    """(the URL without its user:password, the HTTP basic-auth header value for them or None): urllib
    would take `user:pass@host` for the host name."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    netloc += f":{parts.port}" if parts.port else ""
    pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
    return urlunsplit(parts._replace(netloc=netloc)), "Basic " + base64.b64encode(pair.encode()).decode()


def _redacting(make_record):
    def factory(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: the handlers report it as they would have
            return record
        record.msg, record.args = redact(message), None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
        return record

    factory.redacts = True
    return factory


def redact_logs() -> None:
    """Every log record this process creates from now on has its credentials redacted (idempotent)."""
    current = logging.getLogRecordFactory()
    if not getattr(current, "redacts", False):
        logging.setLogRecordFactory(_redacting(current))
