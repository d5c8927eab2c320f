"""docs/WEBHOOKS.md's worked example is what the agent's own code signs and verifies."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from agents.webhooks import EVENT_TYPES, WebhookEvent, WebhookSignatureError, sign, verify_signature

DOC = (Path(__file__).resolve().parent.parent / "docs" / "WEBHOOKS.md").read_text(encoding="utf-8")


def block(language: str) -> str:
    """The first fenced block of `language` ("" for a bare fence) in docs/WEBHOOKS.md."""
    found = re.search(rf"^```{language}\n(.*?)^```$", DOC, flags=re.S | re.M)
    assert found is not None, f"no ```{language} block"
    return found.group(1)


def request() -> tuple[dict[str, str], bytes]:
    """The example request's headers and body bytes, as the doc shows them."""
    head, _, body = block("").partition("\n\n")
    headers = dict(line.split(": ", 1) for line in head.splitlines()[1:])
    return headers, body.rstrip("\n").encode("utf-8")


SECRET = re.search(r"with the secret `([^`]+)`", DOC)


def test_the_example_signature_is_the_agents_own() -> None:
    """The agent would send exactly these headers and body bytes for this event, and its
    receiver-side check accepts them."""
    assert SECRET is not None
    secret = SECRET.group(1).encode("ascii")
    headers, body = request()
    doc = json.loads(body)
    event = WebhookEvent(id=doc["id"], type=doc["type"], created=doc["created"], data=doc["data"])
    assert event.body() == body
    assert headers["X-NRM-Event-Id"] == doc["id"]
    timestamp = headers["X-NRM-Timestamp"]
    assert headers["X-NRM-Signature"] == sign(secret, int(timestamp), body)
    assert headers["X-NRM-Signature"] in DOC.split("the signature is\n", 1)[1]
    verify_signature(secret, timestamp, body, headers["X-NRM-Signature"], now=int(timestamp))
    with pytest.raises(WebhookSignatureError):
        verify_signature(secret, timestamp, body + b" ", headers["X-NRM-Signature"], now=0)


def test_the_documented_receiver_accepts_the_example_and_refuses_a_forgery() -> None:
    """The doc's Python receiver accepts the example, and refuses a changed body, a wrong
    secret and a stale timestamp; it agrees with the agent's verify_signature."""
    assert SECRET is not None
    secret = SECRET.group(1).encode("ascii")
    namespace: dict[str, Any] = {}
    exec(compile(block("python"), "docs/WEBHOOKS.md", "exec"), namespace)  # noqa: S102
    verify = namespace["verify"]
    headers, body = request()
    ts, sig = headers["X-NRM-Timestamp"], headers["X-NRM-Signature"]
    verify(secret, ts, sig, body, now=int(ts) + 299)
    verify(secret, ts, f"v1={'0' * 64}, {sig}", body, now=int(ts))  # one of several
    for args, now in [
        ((secret, ts, sig, body.replace(b"police", b"polite")), int(ts)),
        ((b"another-secret-of-27-bytes!", ts, sig, body), int(ts)),
        ((secret, ts, sig, body), int(ts) + 301),
        ((secret, f"{ts}.5", sig, body), int(ts)),
    ]:
        with pytest.raises(ValueError):
            verify(*args, now=now)


def test_every_event_type_is_documented() -> None:
    """The doc's event table lists exactly the types the agent sends."""
    documented = set(re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \|", DOC, flags=re.M))
    assert documented == EVENT_TYPES
