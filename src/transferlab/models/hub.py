"""Telling a hub id from a path, and whether the hub answers, before the hub client's long retries.

A spec such as ``/nonexistent/dir/model`` is a path, not a hub id (hub ids
are ``NAME`` or ``ORG/NAME``), so a missing one is reported as a missing
directory. And a hub endpoint that accepts connections but never answers
(a proxy, a captive portal, a firewall that drops) used to cost the hub
client's timeouts and retries (about 50 s) before any error:
:func:`hub_answers` sends one HTTP ``HEAD`` and waits a few seconds for any
answer at all.
"""

from __future__ import annotations

import os
import threading
from urllib.parse import urlparse


def endpoint() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.ENDPOINT)
    except Exception:  # pragma: no cover
        return "https://huggingface.co"


def looks_like_path(spec: str) -> bool:
    """Whether ``spec`` names a file or directory rather than a hub id (``NAME`` or ``ORG/NAME``)."""
    if spec.startswith(("/", "./", "../", "~", ".\\")) or spec in (".", ".."):
        return True
    if os.sep != "/" and os.sep in spec:  # pragma: no cover - Windows
        return True
    return spec.count("/") > 1


def hub_answers(timeout: float = 5.0) -> bool:
    """Whether the hub endpoint answers an HTTP request (any status) within ``timeout`` seconds."""
    import http.client

    url = urlparse(endpoint())
    host = url.hostname or "huggingface.co"
    https = url.scheme != "http"
    port = url.port or (443 if https else 80)
    answered: list[bool] = []

    def probe():
        conn_type = http.client.HTTPSConnection if https else http.client.HTTPConnection
        conn = conn_type(host, port, timeout=timeout)
        try:
            conn.request("HEAD", "/")
            conn.getresponse()
            answered.append(True)
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(answered)
