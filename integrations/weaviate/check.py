"""Ask a module URL what Weaviate will ask it, before Weaviate does.

Weaviate checks TRANSFORMERS_/RERANKER_/NER_INFERENCE_API once at startup, but a collection's own
`inferenceUrl` only when it first vectorizes an object, where a typo or a missing model shows up
as failed inserts. `check_inference_url` makes the same header-less calls now (the readiness
check, then /meta) and raises a RemoraError that says what is wrong.
"""

from __future__ import annotations

from typing import Any

import httpx

from remora.integrations.client import RemoraError, RemoraUnavailable


def check_inference_url(url: str, *, timeout: float = 10.0) -> dict[str, Any]:
    """The sidecar's /meta for `url` (a root or `/weaviate/<model>` URL) when Weaviate can use
    it. Sends no API key, as Weaviate does not: a sidecar with REMORA_API_KEY answers 401 unless
    REMORA_WEAVIATE_OPEN=1 and the URL is a `/weaviate/<model>` one.

    Raises RemoraUnavailable when nothing answers, RemoraError (with the status and code) when
    the sidecar refuses: MODEL_NOT_FOUND for an unknown model, UNAUTHORIZED for a closed route."""
    base = url.rstrip("/")
    with httpx.Client(timeout=timeout) as http:
        _get(http, f"{base}/.well-known/ready")
        meta = _get(http, f"{base}/meta")
    if not isinstance(meta, dict):
        raise RemoraError(f"{base}/meta", "the answer is not a JSON object")
    return meta


def _get(http: httpx.Client, where: str) -> Any:
    try:
        response = http.get(where)
    except httpx.TransportError as exc:
        raise RemoraUnavailable(where, f"{type(exc).__name__}: {exc}") from exc
    if not 200 <= response.status_code < 300:  # Weaviate's own test: any 2xx
        code, message = _error(response)
        if response.status_code == 401:
            message += " (Weaviate sends no API key: use a /weaviate/<model> URL and REMORA_WEAVIATE_OPEN=1)"
        raise RemoraError(where, message, status=response.status_code, code=code)
    if response.status_code == 204 or not response.content:
        return None
    try:
        return response.json()
    except ValueError as exc:
        raise RemoraError(where, "the answer is not JSON", status=response.status_code) from exc


def _error(response: httpx.Response) -> tuple[str | None, str]:
    """(code, message) of the sidecar's {"error": message, "code": code} body, else its text."""
    try:
        data = response.json()
    except ValueError:
        return None, response.text[:500] or response.reason_phrase
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        code = data.get("code")
        return (code if isinstance(code, str) else None), data["error"]
    return None, str(data)[:500]
