"""Loaded at start-up by the server process of test_no_telemetry.py (this folder is put on its
PYTHONPATH): records every outbound network attempt the process makes, through Python's audit
hooks, to the file named by REMORA_TEST_NET_LOG. Nothing in Remora imports this.

As a control it then connects once to REMORA_TEST_NET_CONTROL (a loopback port the test listens
on), so the test can tell a silent process from a recorder that records nothing."""

import json
import os
import socket
import sys

_LOG = os.environ.get("REMORA_TEST_NET_LOG")
_EVENTS = ("socket.connect", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo", "socket.gethostbyname",
           "socket.gethostbyaddr", "urllib.Request", "http.client.connect")


def _hook(event, args):
    if event not in _EVENTS:
        return
    try:
        target = args[1] if event in ("socket.connect", "socket.sendto", "socket.sendmsg") else args[0]
        if event == "http.client.connect":
            target = (args[1], args[2])
        elif event == "urllib.Request":
            target = args[0]
        with open(_LOG, "a") as out:
            out.write(json.dumps({"event": event, "target": repr(target)}) + "\n")
    except Exception:  # an audit hook must never break the process it watches
        pass


if _LOG:
    sys.addaudithook(_hook)
    port = os.environ.get("REMORA_TEST_NET_CONTROL")
    if port:
        with socket.create_connection(("127.0.0.1", int(port)), timeout=5):
            pass
