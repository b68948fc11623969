"""Credentials never reach output, in every form a URL or an address carries them: the userinfo
(`https://user:secret@host/...` is shown as `https://***@host/...`) and parameters whose name says they
hold a secret (`?password=...`, `&token=...`, `sig=`, `api_key=`, a DSN's `password=...`: `password=***`).

The one redaction: applied where messages are made (every URL or address we put in a message, an
artifact or a refusal) and, as the guard for everything else, to every log record this process creates
(`redact_logs`: ours, Prefect's, MLflow's, Dask's), whose message and traceback are redacted before any
handler — the console, a log file, Prefect's API handler — sees them. tests/test_generated_input.py
drives every command with credentials in every position and finds none in any output.
"""

from __future__ import annotations

import base64
import logging
import re
import traceback
from urllib.parse import unquote, urlsplit, urlunsplit

# scheme://userinfo@ — userinfo is everything up to the last '@' before the host's '/', '?' or '#'. One
# slash too: a URL that went through a path (a folder named after it) has its '//' collapsed.
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*:/{1,2})[^/?#\s@]*(?:@[^/?#\s@]*)*@")
# user:password@host with the scheme forgotten (`alice:s3cret@db:5432/x`): the same userinfo, no scheme before it.
_BARE_USERINFO = re.compile(r"(?<![\w.%+/:@-])[\w.%+-]+:[^\s/?#@:]+@(?=[\w.-]+(?::\d+)?(?:[/?#\s]|$))")
# name=value where the name says it holds a secret (alone, or as the last part of a longer name:
# api_key, access_token, X-Amz-Signature), after the start, '?', '&', ';', ',' or white space: URL
# queries, fragments and libpq's "key=value" connection strings alike. The value runs to the next
# separator, or to the end of a quoted string.
SECRET_NAMES = ("password", "passwd", "pwd", "pass", "passphrase", "token", "secret", "key", "apikey", "sig",
                "signature", "auth", "authorization", "credential", "credentials", "session", "sessionid",
                "cookie", "jwt", "bearer", "private")  # fmt: skip
_PARAMETER = re.compile(
    rf"(?P<lead>^|[?&;,#\s]|%3[fF]|%26)(?P<name>(?:[\w.-]*[_.-])?(?:{'|'.join(SECRET_NAMES)}))"
    r"(?P<eq>=|%3[dD])(?P<value>[^&;,#\s'\"]*)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """`text` with the userinfo of every URL, and the value of every secret-named parameter, as `***`."""
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}***@", str(text))
    text = _BARE_USERINFO.sub("***@", text)
    return _PARAMETER.sub(lambda m: f"{m['lead']}{m['name']}{m['eq']}***" if m["value"] else m[0], text)


def credentials_in(url: str) -> list[str]:
    """The secrets a URL or address carries (user, password, secret-named parameters' values), for messages
    of libraries that quote a part of it without its scheme, where `redact` cannot recognise them."""
    parts = urlsplit(url if "://" in url else f"x://{url}")
    found = [unquote(v) for v in (parts.username, parts.password) if v]
    found += [m["value"] for m in _PARAMETER.finditer(url) if m["value"]]
    return sorted({f for f in found if len(f) >= 3}, key=len, reverse=True)


def hide(text: str, secrets: list[str]) -> str:
    """`text` redacted, and each of `secrets` (credentials_in's) replaced by `***` wherever it appears."""
    text = redact(text)
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


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
