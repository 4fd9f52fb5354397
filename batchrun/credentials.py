"""The API key: read from the environment variable the config names, and refused where
it would travel in clear text. It never reaches a file, a log line or an error message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit

from .config import RunConfig
from .endpoints import endpoint_config, endpoint_specs
from .errors import AuthError, ConfigError
from .urls import is_nvidia_host, sends_key_in_clear


def read_api_key(cfg: RunConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The key from `cfg.api_key_env`, or None where a keyless local endpoint is fine.

    Raises AuthError for NVIDIA's hosts without a key, and ConfigError when the key would
    travel over plain http to a host that is not loopback.
    """
    env = os.environ if environ is None else environ
    key = env.get(cfg.api_key_env) or None
    host = urlsplit(cfg.base_url).hostname or ""
    if key is None:
        if is_nvidia_host(host):
            raise AuthError(
                f"no API key: set the environment variable {cfg.api_key_env} "
                f"(or name another one with --api-key-env)"
            )
        return None
    if sends_key_in_clear(cfg.base_url) and not cfg.allow_insecure_http:
        raise ConfigError(
            f"refusing to send the key in {cfg.api_key_env} over plain http to {host}; "
            "use https, or pass --allow-insecure-http if this network is trusted"
        )
    return key


def read_keys(cfg: RunConfig, environ: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """Each endpoint's key by endpoint key (endpoints.py), checked as `read_api_key` does:
    a pool whose variable is unset for an NVIDIA endpoint does not start."""
    return {
        spec.key: read_api_key(endpoint_config(cfg, spec), environ) for spec in endpoint_specs(cfg)
    }
