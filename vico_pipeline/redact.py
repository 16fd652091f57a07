"""Secrets kept out of every output: the one place that masks credentials in URLs, text and configs.

Everything that leaves memory (tables, error messages, logs, the report, the card,
exports, manifest.json, the job config `vico submit` uploads) goes through here.
The real URL is used only to fetch.
"""
from __future__ import annotations

import re

MASK = "***"

# Query (or fragment) parameters whose value is a credential: signed-URL signatures, tokens, keys.
SENSITIVE_PARAMS = (
    "token", "access_token", "refresh_token", "id_token", "auth", "auth_token", "session", "sessionid",
    "x-amz-signature", "x-amz-security-token", "x-amz-credential",
    "x-goog-signature", "x-goog-credential", "x-goog-security-token",
    "sig", "signature", "key", "api_key", "apikey", "api-key", "secret", "client_secret",
    "password", "passwd", "pwd", "jwt", "hmac", "code",
)
# Config / header keys (compared without '-' and '_', case-insensitive) whose value is a credential.
_SECRET_KEY_PARTS = ("secret", "password", "passwd", "credential", "privatekey", "accesskey", "apikey",
                     "authorization", "cookie", "bearer")
_SECRET_KEY_EXACT = {"token", "key", "sig", "signature", "auth", "jwt"}

_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s?#]+@", re.I)
_SECRET_PARAM = re.compile(
    r"(?P<name>[?&#;](?:" + "|".join(re.escape(p) for p in SENSITIVE_PARAMS) + r")=)[^&#\s\"'<>]+", re.I)
_BEARER = re.compile(r"(?P<name>\b(?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]{8,}", re.I)


def redact_text(text: str) -> str:
    """Credentials inside a string masked: user:pass@ in URLs, token=... query and fragment values, bearer tokens."""
    if not text:
        return text
    text = _URL_USERINFO.sub(lambda m: m.group("scheme") + MASK + "@", text)
    text = _SECRET_PARAM.sub(lambda m: m.group("name") + MASK, text)
    return _BEARER.sub(lambda m: m.group("name") + MASK, text)


redact_url = redact_text  # a URL is text; the same rules apply


def is_secret_key(key: str) -> bool:
    """A config or header key whose value is a credential. `*_env` keys hold a variable NAME and
    `*_file` / `*_path` keys a path (e.g. download.cookies_file), not the secret itself."""
    name = str(key).lower()
    if name.endswith(("_env", "_file", "_path")):
        return False
    flat = name.replace("-", "").replace("_", "")
    return flat in _SECRET_KEY_EXACT or flat.endswith("token") or any(p in flat for p in _SECRET_KEY_PARTS)


def redact(plain):
    """A copy of `plain` (dicts, lists, strings) with credential-like keys and credentials in text masked."""
    if isinstance(plain, dict):
        out = {}
        for key, value in plain.items():
            if is_secret_key(key) and not isinstance(value, (dict, list)):
                out[key] = MASK if value else value
            else:
                out[key] = redact(value)
        return out
    if isinstance(plain, list):
        return [redact(v) for v in plain]
    if isinstance(plain, str):
        return redact_text(plain)
    return plain
