"""URLs: NVIDIA's hosts, loopback addresses, and the checks of the URL settings.

This module owns what batchrun asks of a URL before the API key may travel to it: is the
host NVIDIA's (where a key meant for NVIDIA may go), is it this machine (where plain http
is fine), and would the key cross the network unencrypted. It also checks the URL settings
(`base_url`, and the `status_url` / `assets_url` templates with their `{base_url}`,
`{origin}` and `{request_id}` placeholders).

It decides nothing else: `config.read_api_key` refuses a key bound for plain http, and the
transport picks, per request, whether to attach the key (`transport.py`).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from .errors import ConfigError

# What the placeholders stand for when a template is checked: any http URL would do.
_SAMPLE_VALUES = {"base_url": "http://x", "origin": "http://x"}


def is_nvidia_host(host: str) -> bool:
    return host == "nvidia.com" or host.endswith(".nvidia.com")


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def sends_key_in_clear(url: str) -> bool:
    """True when a key sent to `url` would cross the network unencrypted (plain http to a
    host that is not this machine)."""
    return urlsplit(url).scheme == "http" and not is_loopback(url)


def http_url(key: str, url: str) -> str:
    """`url` without its trailing slash; ConfigError unless it is http(s) with a host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{key} must be an http:// or https:// URL, got {url!r}")
    return url.rstrip("/")


def status_url_template(key: str, template: str) -> str:
    """Where 202 results are polled: needs `{request_id}`; may use `{base_url}`, `{origin}`."""
    if "{request_id}" not in template:
        raise ConfigError(f"{key} must contain {{request_id}}, got {template!r}")
    return url_template(key, template, request_id="id")


def url_template(key: str, template: str, **more: str) -> str:
    """A URL that may use `{base_url}` and `{origin}` (the asset API's), and the fields
    named in `more` (their sample values fill them for the check)."""
    try:
        filled = template.format(**_SAMPLE_VALUES, **more)
    except (KeyError, IndexError, ValueError) as exc:
        allowed = [f"{{{name}}}" for name in (*_SAMPLE_VALUES, *more)]
        listed = f"{', '.join(allowed[:-1])} and {allowed[-1]}"
        raise ConfigError(f"{key}: only {listed} may be used, got {template!r}") from exc
    http_url(key, filled)
    return template
