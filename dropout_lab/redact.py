"""Credentials never reach output, in every form a URL or an address carries them: the userinfo
(`https://user:secret@host/...` is shown as `https://***@host/...`, also when the password holds a raw
`/`, `#`, `?` or space, as SQLAlchemy accepts, and with the scheme forgotten) and parameters whose name
ends in a word that says they hold a secret (`?password=...`, `&token=...`, `sig=`, `api_key=`,
`sslpassword=`, a DSN's `password='...'`: `password=***`). A webhook's secret is its path: `host_only`.

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
# user:password@ where the password holds what a URL's userinfo may not (SQLAlchemy takes everything up
# to the last '@' as the password): from `scheme://user:` to the line's last '@' before a host.
_RAW_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^:/?#\s@]*:[^@\n]*@(?=[\w\[])")
# user:password@host with the scheme forgotten (`alice:s3cret@db:5432/x`, `...@[::1]:9`): the same userinfo, no
# scheme before it.
_HOST = r"(?:[\w.-]+|\[[\dA-Fa-f:.]+\])"  # a name, an IPv4 address or a bracketed IPv6 one
_BARE_USERINFO = re.compile(rf"(?<![\w.%+/:@-])[\w.%+-]+:[^\s/?#@:]+@(?={_HOST}(?::\d+)?(?![\w.-]))")
# name=value where the name ends in a word that says it holds a secret (api_key, access_token,
# X-Amz-Signature, libpq's sslpassword), after the start, '?', '&', ';', ',' or white space: URL
# queries, fragments and libpq's "key=value" connection strings alike. The value runs to the next
# separator, or is a whole quoted string.
SECRET_NAMES = ("password", "passwd", "pwd", "pass", "passphrase", "token", "secret", "key", "apikey", "sig",
                "signature", "auth", "authorization", "credential", "credentials", "session", "sessionid",
                "cookie", "jwt", "bearer", "private")  # fmt: skip
_PARAMETER = re.compile(
    rf"(?P<lead>^|[?&;,#\s]|%3[fF]|%26)(?P<name>[\w.-]*(?:{'|'.join(SECRET_NAMES)}))"
    r"(?P<eq>[ \t]*(?:=|%3[dD])[ \t]*)(?P<value>'(?:[^'\\]|\\.)*'?|\"(?:[^\"\\]|\\.)*\"?|[^&;,#\s'\"]*)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """`text` with the userinfo of every URL, and the value of every secret-named parameter, as `***`."""
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}***@", str(text))
    text = _RAW_PASSWORD.sub(lambda m: f"{m.group('scheme')}***@", text)
    text = _BARE_USERINFO.sub("***@", text)
    return _PARAMETER.sub(lambda m: f"{m['lead']}{m['name']}{m['eq']}***" if m["value"] else m[0], text)


def host_only(url: str) -> str:
    """A URL as `scheme://host[:port]/…`: for a webhook, whose path is its secret (Slack's, Discord's)."""
    parts = urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname or ""
    return f"{parts.scheme}://{host}{port}/…" if parts.scheme and host else "***"


def credentials_in(url: str) -> list[str]:
    """The secrets a URL or address carries (user, password, secret-named parameters' values), for messages
    of libraries that quote a part of it without its scheme, where `redact` cannot recognise them."""
    parts = urlsplit(url if "://" in url else f"x://{url}")
    found = [unquote(v) for v in (parts.username, parts.password) if v]
    if raw := re.match(r"[a-zA-Z][\w+.-]*://[^:/?#\s@]*:(.*)@", url):  # SQLAlchemy's: up to the last '@'
        found.append(raw[1])
    found += [m["value"].strip("'\"") for m in _PARAMETER.finditer(url) if m["value"]]
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
