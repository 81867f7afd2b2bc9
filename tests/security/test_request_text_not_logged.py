"""Promise: request text is not logged by default.

The hardened server runs at its default log level with its output captured. Texts carrying a
unique marker go through every route family, through requests that fail validation, fail auth,
are too long, name a model that cannot do the task, and one that fails inside the model's forward
pass (which is logged, with its traceback). The marker never reaches the log.
"""

from __future__ import annotations

import time
import uuid

import httpx
import msgpack
import pytest

from tests.security.support import Hardened, still_serving

pytestmark = pytest.mark.integration


def test_request_text_never_reaches_the_log(hardened: Hardened) -> None:
    marker = f"Confidential-{uuid.uuid4().hex}"
    text = f"the patient record {marker} says"
    client = hardened.client
    json_headers = {"Content-Type": "application/json"}
    sent = [
        # served
        client.post("/v1/encode", json={"model": "tiny", "inputs": [text], "prompt": f"{marker}: "}),
        client.post("/v1/score", json={"model": "tiny", "query": text, "documents": [text, "other"]}),
        client.post("/v1/embeddings", json={"model": "tiny", "input": [text]}),
        client.post("/v1/rerank", json={"model": "tiny", "query": text, "documents": [text], "return_documents": True}),
        client.post("/embed", json={"inputs": text}),
        client.post("/tokenize", json={"inputs": text}),
        client.post("/v1/qdrant/inference", json={
            "inputs": [{"data": text, "data_type": "text", "model": "tiny", "options": {}}], "inference": "search",
        }),
        client.post("/v1/encode", content=msgpack.packb({"model": "tiny", "inputs": [text]}),
                    headers={"Content-Type": "application/msgpack"}),
        # refused
        client.post("/v1/encode", json={"model": "tiny", "inputs": [text, 5]}),
        client.post("/v1/encode", json={"model": "tiny", "inputs": [text], "truncate": "maybe"}),
        client.post("/v1/encode", content=f'{{"model": "tiny", "inputs": ["{text}"'.encode(), headers=json_headers),
        client.post("/v1/encode", content=b"\x92\xc4" + text.encode(), headers={"Content-Type": "application/msgpack"}),
        client.post("/v1/encode", json={"model": "tiny", "inputs": [text * 200], "truncate": False}),
        client.post("/v1/encode", json={"model": "tiny", "inputs": [text] * 9}),
        client.post("/v1/extract", json={"model": "tiny", "inputs": [text]}),
        client.post("/v1/encode", json={"model": "no-such-model", "inputs": [text]}),
        httpx.post(f"{hardened.server.url}/v1/encode", json={"model": "tiny", "inputs": [text]}),  # no key
        # fails inside the model: logged as an internal error, with its traceback
        client.post("/v1/encode", json={"model": "broken", "inputs": [text]}),
        client.post("/v1/score", json={"model": "broken", "query": text, "documents": [text]}),
    ]
    statuses = [r.status_code for r in sent]
    assert statuses[:8] == [200] * 8, [(r.status_code, r.text[:200]) for r in sent[:8]]
    assert all(400 <= s < 500 for s in statuses[8:17]), statuses
    assert statuses[17:] == [500, 500], [r.text for r in sent[17:]]
    still_serving(client)

    time.sleep(0.5)  # the server writes its log as it goes; give the last lines a moment
    log = hardened.log.read_text(errors="replace")
    # The control: the log is live and records the failures of these very requests.
    assert "internal error on /v1/encode" in log and "IndexError" in log, log[-3000:]
    assert marker.lower() not in log.lower(), "request text found in the server log"
    assert "patient record" not in log
