"""Credentials never reach output: `https://user:secret@host/...` is shown as `https://***@host/...`.

Applied to every URL we log or put in an error message (mirror URLs, PREFECT_API_URL), and to the
CLI's final error line as a last guard.
"""

from __future__ import annotations

import re

# scheme://userinfo@ — userinfo is everything up to the last '@' before the host's '/', '?' or '#'.
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#\s@]*(?:@[^/?#\s@]*)*@")


def redact(text: str) -> str:
    """`text` with the user:password part of every URL in it replaced by `***`."""
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}***@", str(text))
