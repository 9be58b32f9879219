"""Optional API keys (FER_API_KEYS, FER_API_KEYS_FILE) for the API routes; probes, metrics and the web page
stay open. An app-wide dependency, so default-deny: a route added later is protected unless it is listed as
open here (static files, served by a mount, need none)."""

import hmac
import logging
import os
from pathlib import Path

from fastapi import HTTPException, Request

from service.settings import Settings

logger = logging.getLogger("service")

OPEN_PATHS = {"/", "/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json",
              "/favicon.ico"}
OPEN_PREFIXES = ("/static/", "/v2/health/")
METRICS_PATH = "/metrics"
REALM = 'Bearer realm="fer-explain"'


class KeyFileError(ValueError):
    pass


class ApiKeys:
    """The accepted keys: from the setting, plus the key file, read again whenever the file changes
    (a Kubernetes Secret mounted as a file is updated in place when the Secret is)."""

    def __init__(self, keys: list[str], path: Path | None):
        self._fixed = [key.encode() for key in keys if key]
        self._path = path
        self._file_keys: list[bytes] = []
        self._file_stamp: tuple[int, int] | None = None
        self._file_error: str | None = None  # the last reload failure, logged once
        if path is not None:
            self._file_keys = _read_key_file(path)  # at start, a missing or empty file is an error
            self._file_stamp = _stamp(path)

    @classmethod
    def from_settings(cls, settings: Settings) -> "ApiKeys":
        return cls([key.get_secret_value().strip() for key in settings.api_keys], settings.api_keys_file)

    @property
    def enabled(self) -> bool:
        return bool(self._fixed) or self._path is not None

    def accepts(self, candidate: str) -> bool:
        """Constant-time comparison against every key (no early exit that would tell which one was close)."""
        given = candidate.encode()
        matched = False
        for key in self._fixed + self._current_file_keys():
            matched |= hmac.compare_digest(given, key)
        return matched

    def _current_file_keys(self) -> list[bytes]:
        if self._path is None:
            return []
        try:
            stamp = _stamp(self._path)
            if stamp != self._file_stamp:
                self._file_keys, self._file_stamp, self._file_error = _read_key_file(self._path), stamp, None
                logger.info("API keys reloaded from %s (%d keys)", self._path, len(self._file_keys))
        except (OSError, KeyFileError) as error:  # keep the last good keys while a Secret is being rewritten
            if str(error) != self._file_error:
                logger.warning("cannot reload API keys: %s; keeping the previous ones", error)
                self._file_error = str(error)
        return self._file_keys


def _stamp(path: Path) -> tuple[int, int]:
    status = os.stat(path)
    return status.st_mtime_ns, status.st_size


def _read_key_file(path: Path) -> list[bytes]:
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise KeyFileError(f"cannot read API keys file {path}: {error}") from None
    keys = [line.strip().encode() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        raise KeyFileError(f"API keys file {path} holds no keys")
    return keys


def presented_key(request: Request) -> str | None:
    """`Authorization: Bearer <key>` or `X-API-Key: <key>`."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.headers.get("x-api-key", "").strip() or None


def is_open(path: str, metrics_open: bool) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES) or (path == METRICS_PATH and metrics_open)


async def require_api_key(request: Request) -> None:
    """401 with `WWW-Authenticate` for API routes without a valid key. Keys are never logged or echoed."""
    keys: ApiKeys = request.app.state.api_keys
    route_path = getattr(request.scope.get("route"), "path", request.url.path)
    if not keys.enabled or is_open(route_path, not request.app.state.settings.metrics_require_key):
        return
    key = presented_key(request)
    if key is not None and keys.accepts(key):
        return
    if key is None:
        raise HTTPException(401, "missing API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`",
                            headers={"WWW-Authenticate": REALM})
    raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'})
