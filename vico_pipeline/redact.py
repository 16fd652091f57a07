"""Secrets kept out of every output: the one place that masks credentials in URLs, text and configs.

Everything that leaves memory (tables, error messages, logs, the report, the card,
exports, manifest.json, the job config `vico submit` uploads) goes through here.
The real URL is used only to fetch.

Names are matched by their parts, not from a list of exact spellings: a query
parameter, config key or header is a credential when one of its parts (split on
`-`, `_`, `.` and camelCase) is a secret word, so `private_token`, `accessToken`,
`api-token`, `sessionToken` and `AWSAccessKeyId` are all caught. Signed-URL
parameters of the object stores are added by name (`X-Amz-*`, `X-Goog-*`, Azure's
`sig`, and `se`/`sp` in a URL that carries `sv`).
"""
from __future__ import annotations

import re

MASK = "***"

# A name holding one of these parts names a credential (`max_tokens` does not: "tokens" is no part here).
SECRET_PARTS = frozenset({
    "token", "secret", "password", "passwd", "pwd", "passphrase", "key", "signature", "sig", "credential",
    "credentials", "session", "sessionid", "auth", "authorization", "cookie", "cookies", "bearer", "jwt", "hmac",
    "apikey", "accesskey", "privatekey", "secretkey", "sessiontoken", "accesstoken",
})
# Plurals name lists of credentials (`api_keys`). "tokens" mostly counts model tokens (max_tokens,
# window_tokens): it is a credential only beside a word that says so (access_tokens, api_tokens).
PLURAL_PARTS = frozenset({"keys", "secrets", "passwords", "signatures", "sessions"})
TOKENS_QUALIFIERS = frozenset({"access", "api", "auth", "refresh", "id", "bearer", "session", "private", "personal",
                               "oauth", "hf", "github", "secret"})
# Whole names that are credentials without a secret part: an OAuth code, signed-URL prefixes.
SECRET_NAMES = frozenset({"code"})
SECRET_PREFIXES = ("x-amz-", "x-goog-")
# Azure SAS: `sig` is the signature; expiry and permissions are masked too when the URL is a SAS (has sv=).
AZURE_SAS_PARTS = frozenset({"se", "sp"})
# Keys that hold the NAME of a variable, or a path to a file, never the secret itself.
NOT_SECRET_SUFFIXES = ("_env", "_file", "_path")

_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")


def name_parts(name: str) -> list[str]:
    """`AWSAccessKeyId` -> aws, access, key, id; `api-token` -> api, token; `X-Amz-Date` -> x, amz, date."""
    return [p.lower() for chunk in re.split(r"[^A-Za-z0-9]+", str(name)) for p in _CAMEL.findall(chunk)]


def is_secret_name(name: str, azure_sas: bool = False) -> bool:
    """A parameter, config key or header name whose value is a credential."""
    lowered = str(name).lower()
    if lowered.endswith(NOT_SECRET_SUFFIXES):
        return False
    if lowered in SECRET_NAMES or lowered.startswith(SECRET_PREFIXES) or (azure_sas and lowered in AZURE_SAS_PARTS):
        return True
    parts = name_parts(name)
    if any(p in SECRET_PARTS for p in parts) or "".join(parts) in SECRET_PARTS:
        return True
    return any(p in PLURAL_PARTS for p in parts) or ("tokens" in parts and bool(TOKENS_QUALIFIERS.intersection(parts)))


is_secret_key = is_secret_name  # config and header keys follow the same rule

# user:password@ -- up to the LAST @ of the authority, so a password holding '@' is masked whole.
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)[^/?#\s\"'<>]*@", re.I)
# name=value after ? & # ; in a URL, or after start/space/quote in a message ("api_key=sk-...").
_PARAM = re.compile(r"(?P<lead>[?&#;\s\"',(]|^)(?P<name>[A-Za-z0-9_.\-\[\]]+)=(?P<value>[^&#;\s\"'<>)]+)")
# A command-line flag with its value: --api-key sk-..., --api-key=sk-...
_FLAG = re.compile(r"(?P<flag>(?<![\w-])--?(?P<name>[A-Za-z][A-Za-z0-9_-]*)[= ])(?P<value>[^\s\"'<>]+)")
_BEARER = re.compile(r"(?P<name>\b(?:bearer|basic|token)\s+)[A-Za-z0-9._~+/=-]{8,}", re.I)
_AZURE_SAS = re.compile(r"[?&]sv=", re.I)


def redact_text(text: str) -> str:
    """Credentials inside a string masked: user:pass@ in URLs, secret parameters (query, fragment,
    `name=value` in a message), secret command-line flags, bearer tokens."""
    if not text or not isinstance(text, str):
        return text
    text = _URL_USERINFO.sub(lambda m: m.group("scheme") + MASK + "@", text)
    sas = bool(_AZURE_SAS.search(text))
    text = _PARAM.sub(lambda m: m.group("lead") + m.group("name") + "=" + MASK
                      if is_secret_name(m.group("name"), sas) else m.group(0), text)
    text = _FLAG.sub(lambda m: m.group("flag") + MASK if is_secret_name(m.group("name")) else m.group(0), text)
    return _BEARER.sub(lambda m: m.group("name") + MASK, text)


redact_url = redact_text  # a URL is text; the same rules apply


def _mask_all(value):
    """Every leaf under a secret key masked, in lists and dicts too; empty values stay empty."""
    if isinstance(value, dict):
        return {k: _mask_all(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_mask_all(v) for v in value]
    return MASK if value not in (None, "", False) else value


def redact(plain):
    """A copy of `plain` (dicts, lists, strings) with every value under a credential-like key masked
    and credentials in text masked (a list's `--api-key`, `VALUE` pair included)."""
    if isinstance(plain, dict):
        return {key: _mask_all(value) if is_secret_key(key) else redact(value) for key, value in plain.items()}
    if isinstance(plain, (list, tuple)):
        out, after_flag = [], False
        for value in plain:
            out.append(_mask_all(value) if after_flag else redact(value))
            after_flag = isinstance(value, str) and bool(re.fullmatch(r"--?[A-Za-z][\w-]*", value)) \
                and is_secret_name(value.lstrip("-"))
        return out
    if isinstance(plain, str):
        return redact_text(plain)
    return plain
