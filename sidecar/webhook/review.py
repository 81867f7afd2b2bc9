"""AdmissionReview v1 in, AdmissionReview v1 out.

The answer is always `allowed: true`. Remora is an add-on to someone else's database: the chart
registers the webhook with `failurePolicy: Ignore`, so an unreachable webhook never blocks a pod,
and a reachable one must not either. A pod the webhook cannot handle is admitted as it is, with
a warning saying why (kubectl prints admission warnings; they also reach the audit log).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping
from typing import Any

from remora.sidecar.webhook.config import InjectionConfig
from remora.sidecar.webhook.mutate import Mutation, mutate

log = logging.getLogger("remora.webhook")

API_VERSION = "admission.k8s.io/v1"
# The API server may drop warnings longer than this; keep each one a single short line.
MAX_WARNING = 256


class BadReview(ValueError):
    """The body is not an AdmissionReview v1 request; the server answers 400 with this message."""


def _request(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadReview("expected an AdmissionReview JSON object")
    if body.get("apiVersion") != API_VERSION or body.get("kind") != "AdmissionReview":
        raise BadReview(f"expected apiVersion {API_VERSION} and kind AdmissionReview, got "
                        f"{body.get('apiVersion')!r} and {body.get('kind')!r}")
    request = body.get("request")
    if not isinstance(request, dict):
        raise BadReview("AdmissionReview has no request")
    if not isinstance(request.get("uid"), str) or not request["uid"]:
        raise BadReview("request.uid is missing")
    if not isinstance(request.get("kind"), dict):
        raise BadReview("request.kind is missing")
    return request


def _warning(text: str) -> str:
    line = " ".join(f"remora: {text}".split())
    return line if len(line) <= MAX_WARNING else line[: MAX_WARNING - 3] + "..."


def _describe(request: Mapping[str, Any]) -> str:
    """namespace/name for logs; a pod from generateName has no name yet: `qdrant-7d9f-*`."""
    obj = request.get("object")
    meta = (obj.get("metadata") if isinstance(obj, dict) else None) or {}
    name = request.get("name") or meta.get("name") or f"{meta.get('generateName', '')}*"
    return f"{request.get('namespace') or '-'}/{name}"


def _decide(request: Mapping[str, Any], config: InjectionConfig) -> Mutation:
    kind = request["kind"]
    if (kind.get("group") or "", kind.get("kind")) != ("", "Pod"):
        return Mutation(skipped=f"not a pod ({kind.get('kind')})")
    if request.get("subResource"):
        return Mutation(skipped=f"subresource {request['subResource']}")
    if request.get("operation") != "CREATE":
        # A running pod's containers cannot change; only a new pod can get the sidecar.
        return Mutation(skipped=f"operation {request.get('operation')}")
    pod = request.get("object")
    if not isinstance(pod, dict):
        raise BadReview("request.object is missing for a pod CREATE")
    return mutate(pod, config)


def review(body: object, config: InjectionConfig) -> dict[str, Any]:
    """The AdmissionReview response for `body`; raises BadReview only for a malformed request."""
    request = _request(body)
    response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
    where = _describe(request)
    try:
        mutation = _decide(request, config)
    except BadReview:
        raise
    except Exception as exc:  # never deny (see the module doc): admit the pod as it is
        log.exception("pod %s: not injected", where)
        mutation = Mutation(warnings=[f"sidecar not injected: {type(exc).__name__}: {exc}"])
    if mutation.skipped:
        log.info("pod %s: skipped: %s", where, mutation.skipped)
    elif mutation.patch:
        log.info("pod %s: injected (%d ops)", where, len(mutation.patch))
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(mutation.patch).encode()).decode()
    for text in mutation.warnings:
        log.warning("pod %s: %s", where, text)
    if mutation.warnings:
        response["warnings"] = [_warning(w) for w in mutation.warnings]
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}
