"""Credentials in tracking URIs are shown and stored redacted; the real URI only connects.

`http://user:token@host` and `postgresql://user:pw@host/db` carry a password in the URI.
Everything case-tune writes or prints (sweep.json, best_configs.yaml, final.md, state.json,
summaries, errors, Tune's pickled callbacks) holds `redact_uri(uri)` instead, with the
password replaced by ``***``. The process that connects keeps the real URI in memory
(`remember`), and objects that were pickled with the redacted form look it up again
(`connect_uri`); a resumed command gets it from `--tracking-uri` once more.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
# Query parameters that carry secrets in database and server URIs.
_SECRET_KEYS = {"password", "pass", "pwd", "token", "access_token", "secret", "api_key", "apikey"}
_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_REAL: dict[str, str] = {}  # redacted -> real, for this process only


def redact_uri(uri: str) -> str:
    """``uri`` with the password of its user info (or a bare token user) and secret query
    values replaced by ``***``; unchanged when it holds none."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, sep, _password = userinfo.partition(":")
        # user:password -> user:***; a lone name is a token as often as a user: mask it.
        netloc = f"{user}:{MASK}@{host}" if sep else f"{MASK}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in _SECRET_KEYS for k, _ in pairs):
            masked = [(k, MASK if k.lower() in _SECRET_KEYS else v) for k, v in pairs]
            query = urlencode(masked, safe="*")
    if netloc == parts.netloc and query == parts.query:
        return uri
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """Every URI inside ``text`` (a command line, a log line) redacted."""
    return _URI_IN_TEXT.sub(lambda m: redact_uri(m.group(0)), text)


def is_redacted(uri: str) -> bool:
    return MASK in uri and redact_uri(uri) == uri


def remember(uri: str) -> str:
    """Keep the real ``uri`` in this process; returns its redacted form."""
    shown = redact_uri(uri)
    _REAL[shown] = uri
    return shown


def connect_uri(uri: str) -> str:
    """The real URI behind a redacted one remembered in this process (else ``uri`` itself)."""
    return _REAL.get(uri, uri)
