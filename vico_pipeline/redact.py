"""Secrets kept out of every output: one place that masks credentials in URLs, text and configs."""
from __future__ import annotations

import re

_SECRET_KEY = re.compile(r"(secret|password|passwd|credential|private_key|access_key|api_key$|^token$|_token$|^key$)", re.I)
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.I)
_SECRET_QUERY = re.compile(r"([?&](?:token|key|api_key|apikey|sig|signature|secret|password|x-amz-signature|x-amz-credential)=)[^&\s]+", re.I)


def redact_text(text: str) -> str:
    """Credentials inside a string (user:pass@ in URLs, token=... query values) masked."""
    text = _URL_USERINFO.sub(lambda m: m.group("scheme") + "***@", text)
    return _SECRET_QUERY.sub(lambda m: m.group(1) + "***", text)


def redact(plain):
    """Secrets never reach a manifest: credential-like keys masked, credentials in URLs masked.

    `*_env` keys hold the NAME of an environment variable, which is not a secret.
    """
    if isinstance(plain, dict):
        out = {}
        for key, value in plain.items():
            if _SECRET_KEY.search(str(key)) and not str(key).endswith("_env") and not isinstance(value, (dict, list)):
                out[key] = "***" if value else value
            else:
                out[key] = redact(value)
        return out
    if isinstance(plain, list):
        return [redact(v) for v in plain]
    if isinstance(plain, str):
        return redact_text(plain)
    return plain
