"""Where the client connects and with which key: constructor arguments, else the environment, else defaults."""

from __future__ import annotations

import ipaddress
import os
import warnings

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
URL_VARIABLE = "ALBERT_SPP_URL"
KEY_VARIABLE = "ALBERT_SPP_API_KEY"
USER_AGENT = "albert-spp-python/0.1.0"


class InsecureKeyWarning(UserWarning):
    """The API key would travel in clear text: plain http to a host other than this machine."""


def root(url: str) -> str:
    """The server's root URL: no trailing slash, no `/v1` (the client adds it)."""
    return url.rstrip("/").removesuffix("/v1")


def base_url(url: str | None = None) -> str:
    """The root of `url`, else of $ALBERT_SPP_URL, else DEFAULT_URL."""
    return root(url or os.environ.get(URL_VARIABLE) or DEFAULT_URL)


def api_key(key: str | None = None) -> str | None:
    """`key`, else $ALBERT_SPP_API_KEY (never another service's variable), else None: no Authorization header."""
    return key or os.environ.get(KEY_VARIABLE) or None


def headers(key: str | None) -> dict[str, str]:
    sent = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if key:
        sent["Authorization"] = f"Bearer {key}"
    return sent


def is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def insecure(url: str, key: str | None) -> str | None:
    """Why sending `key` to `url` is unsafe (plain http to another machine), else None."""
    parsed = httpx.URL(url)
    if key and parsed.scheme == "http" and not is_loopback(parsed.host):
        return f"the API key would be sent in clear text to {parsed.host} (plain http): use an https:// URL"
    return None


def warn_if_insecure(url: str, key: str | None, stacklevel: int = 3) -> None:
    """An InsecureKeyWarning when `key` would be sent over plain http to another machine."""
    message = insecure(url, key)
    if message is not None:
        warnings.warn(message, InsecureKeyWarning, stacklevel=stacklevel)
