"""The signing test vectors of docs/protocol.md, checked against the project's signer, against
`openssl` (on the message bytes, and through the doc's own shell commands), against the
agent's verifier and against a running agent."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path

import pytest
from freezegun import freeze_time

from rpc_common.settings import MIN_SECRET_BYTES
from rpc_common.signing import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    VerificationFailure,
    body_digest,
    parse_timestamp,
    sign_bound,
    sign_original,
    signed_headers,
    verify_request,
)
from tests.support import OTHER_SECRET, agent_app

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
REQUIRED_VECTORS = {"v1", "v2-health", "v2-health-wait", "v2-body"}
SKEW = 300.0

SETUP_BLOCK = re.compile(r"<!-- signing-vectors: setup -->\s*```sh\n(.*?)```", re.S)
VECTOR_BLOCK = re.compile(
    r"<!-- signing-vector: ([\w-]+) -->\s*```text\n(.*?)```\s*```sh\n(.*?)```", re.S
)
FIELD = re.compile(r"^([A-Za-z0-9_-]+):\s+(.*?)\s*$")
SHELL_VALUE = re.compile(r"^([A-Z0-9_]+)=(?:'([^']*)'|(\S+))", re.M)
# `SHA2-256(stdin)= <hex>` (OpenSSL 3) or `(stdin)= <hex>` (older).
OPENSSL_OUTPUT = re.compile(r"\(stdin\)= ([0-9a-f]{64})$", re.M)


@dataclass(frozen=True)
class Setup:
    secret: str
    timestamp: str
    empty_sha256: str
    script: str


@dataclass(frozen=True)
class Vector:
    name: str
    fields: dict[str, str]
    command: str

    @property
    def scheme(self) -> str:
        return self.fields["scheme"]

    @property
    def timestamp(self) -> str:
        return self.fields["X-Timestamp"]

    @property
    def signature(self) -> str:
        return self.fields["X-Signature"]

    @property
    def hex(self) -> str:
        return self.signature.removeprefix("v2=")

    @property
    def method(self) -> str:
        return self.fields.get("method", "GET")

    @property
    def target(self) -> str:
        return self.fields.get("target", "/forest/health")

    @property
    def body(self) -> bytes:
        text = self.fields.get("body", "(empty)")
        return b"" if text == "(empty)" else text.encode("utf-8")

    @property
    def message(self) -> bytes:
        """The documented message, with each `\\n` read as one line feed."""
        return self.fields["message"].replace("\\n", "\n").encode("utf-8")


def doc_text() -> str:
    assert DOC.is_file(), f"{DOC} is missing"
    return DOC.read_text(encoding="utf-8")


@cache
def setup() -> Setup:
    match = SETUP_BLOCK.search(doc_text())
    assert match, "docs/protocol.md has no '<!-- signing-vectors: setup -->' sh block"
    script = match.group(1)
    values = {name: quoted or bare for name, quoted, bare in SHELL_VALUE.findall(script)}
    return Setup(values["SECRET"], values["TS"], values["EMPTY_SHA256"], script)


def parse_vectors() -> list[Vector]:
    vectors = []
    for name, text, command in VECTOR_BLOCK.findall(doc_text()):
        fields = {}
        for line in text.splitlines():
            field = FIELD.match(line)
            assert field, f"vector {name}: unreadable line {line!r}"
            fields[field.group(1)] = field.group(2)
        vectors.append(Vector(name, fields, command))
    return vectors


VECTORS = parse_vectors()


def at(vector: Vector) -> datetime:
    moment = parse_timestamp(vector.timestamp)
    assert moment is not None, f"vector {vector.name}: unreadable timestamp"
    return moment


def verify(
    vector: Vector,
    *,
    method: str | None = None,
    target: str | None = None,
    body: bytes | None = None,
    secrets: list[str] | None = None,
    require_bound: bool = False,
    now: datetime | None = None,
) -> VerificationFailure | None:
    """The agent's verdict on the vector's headers, for the vector's request unless told."""
    return verify_request(
        vector.timestamp,
        vector.signature,
        method=vector.method if method is None else method,
        target=vector.target if target is None else target,
        body=vector.body if body is None else body,
        secrets=[setup().secret] if secrets is None else secrets,
        allowed_clock_skew=SKEW,
        require_bound=require_bound,
        now=at(vector) if now is None else now,
    )


def required_program(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"`{name}` is not installed; the protocol's test vectors need it: "
            f"install the Debian package `{package}` (apt-get install {package})"
        )
    return path


def openssl_hmac(secret: str, message: bytes) -> str:
    """What `openssl dgst -sha256 -hmac <secret>` prints for `message` on stdin."""
    openssl = required_program("openssl", "openssl")
    done = subprocess.run(
        [openssl, "dgst", "-sha256", "-hmac", secret],
        input=message,
        capture_output=True,
        check=True,
        timeout=30,
    )
    found = OPENSSL_OUTPUT.search(done.stdout.decode("ascii"))
    assert found, f"unexpected openssl output {done.stdout!r}"
    return found.group(1)


by_name = pytest.mark.parametrize("vector", VECTORS, ids=[vector.name for vector in VECTORS])


# --- the page itself ----------------------------------------------------------------------


def test_the_page_has_every_required_vector_once() -> None:
    names = [vector.name for vector in VECTORS]
    assert len(names) == len(set(names)), names
    assert set(names) >= REQUIRED_VECTORS


def test_the_secret_is_a_marked_test_secret_of_at_least_32_bytes() -> None:
    secret = setup().secret
    assert len(secret.encode("utf-8")) >= MIN_SECRET_BYTES
    assert "test" in secret and "not-for-production" in secret
    assert "TEST VALUES ONLY" in setup().script


def test_the_setup_values_are_right() -> None:
    assert parse_timestamp(setup().timestamp) is not None
    assert setup().empty_sha256 == hashlib.sha256(b"").hexdigest()


@by_name
def test_each_vector_uses_the_setup_timestamp_and_lowercase_hex(vector: Vector) -> None:
    assert vector.timestamp == setup().timestamp
    assert re.fullmatch(r"[0-9a-f]{64}", vector.hex), vector.signature
    assert vector.signature.startswith("v2=") == (vector.scheme == "v2")


# --- the message ------------------------------------------------------------------------


@by_name
def test_the_documented_message_follows_the_rules(vector: Vector) -> None:
    if vector.scheme == "v1":
        expected = vector.timestamp
    else:
        assert vector.method == vector.method.upper()
        assert vector.fields["body_sha256"] == hashlib.sha256(vector.body).hexdigest()
        assert body_digest(vector.body) == vector.fields["body_sha256"]
        parts = [vector.timestamp, vector.method, vector.target, vector.fields["body_sha256"]]
        expected = "\n".join(parts)
    assert vector.message == expected.encode("utf-8")
    assert not vector.message.endswith(b"\n")


# --- three implementations agree ----------------------------------------------------------


@by_name
def test_the_projects_signer_gives_the_documented_signature(vector: Vector) -> None:
    secret = setup().secret
    if vector.scheme == "v1":
        assert sign_original(secret, vector.timestamp) == vector.signature
    else:
        signature = sign_bound(secret, vector.timestamp, vector.method, vector.target, vector.body)
        assert signature == vector.signature
    headers = signed_headers(
        secret,
        method=vector.method,
        target=vector.target,
        body=vector.body,
        scheme="v1" if vector.scheme == "v1" else "v2",
        now=at(vector),
    )
    assert headers == {TIMESTAMP_HEADER: vector.timestamp, SIGNATURE_HEADER: vector.signature}


@by_name
def test_openssl_on_the_message_bytes_gives_the_documented_hex(vector: Vector) -> None:
    assert openssl_hmac(setup().secret, vector.message) == vector.hex


@by_name
def test_the_documented_shell_command_prints_the_documented_hex(vector: Vector) -> None:
    required_program("openssl", "openssl")
    bash = required_program("bash", "bash")
    script = "set -euo pipefail\n" + setup().script + vector.command
    done = subprocess.run(
        [bash, "-c", script],
        capture_output=True,
        check=True,
        timeout=30,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C"},
    )
    printed = OPENSSL_OUTPUT.findall(done.stdout.decode("ascii"))
    assert printed == [vector.hex], done.stdout
    # The expected output the page shows under the command is that same value.
    assert f"(stdin)= {vector.hex}" in vector.command


# --- the agent's verifier -----------------------------------------------------------------


@by_name
def test_the_verifier_accepts_the_documented_headers_within_the_window(vector: Vector) -> None:
    sent = at(vector)
    for offset in (0.0, -SKEW, SKEW):
        assert verify(vector, now=sent + timedelta(seconds=offset)) is None, offset
    for offset in (-SKEW - 1, SKEW + 1):
        late = verify(vector, now=sent + timedelta(seconds=offset))
        assert late is VerificationFailure.TIMESTAMP_OUT_OF_WINDOW, offset


@by_name
def test_the_verifier_accepts_a_previous_secret_and_refuses_another(vector: Vector) -> None:
    assert verify(vector, secrets=[OTHER_SECRET, setup().secret]) is None
    assert verify(vector, secrets=[OTHER_SECRET]) is VerificationFailure.BAD_SIGNATURE


V2_VECTORS = [vector for vector in VECTORS if vector.scheme == "v2"]


@pytest.mark.parametrize("vector", V2_VECTORS, ids=[vector.name for vector in V2_VECTORS])
def test_v2_headers_are_refused_for_any_other_request(vector: Vector) -> None:
    other_target = "/forest/rpc-schema" if vector.target != "/forest/rpc-schema" else "/forest/sse"
    more_query = vector.target + ("&" if "?" in vector.target else "?") + "x=1"
    refused = VerificationFailure.BAD_SIGNATURE
    assert verify(vector, target=other_target) is refused
    assert verify(vector, target=more_query) is refused
    assert verify(vector, target="/api" + vector.target) is refused  # a proxy moved the path
    assert verify(vector, method="HEAD" if vector.method != "HEAD" else "GET") is refused
    assert verify(vector, body=vector.body + b" ") is refused
    assert verify(vector, require_bound=True) is None


def test_v1_headers_are_accepted_for_any_request_unless_bound_ones_are_required() -> None:
    (vector,) = [vector for vector in VECTORS if vector.scheme == "v1"]
    # What docs/security.md warns about: a captured v1 signature replays on any route.
    assert verify(vector, target="/forest/rpc-schema") is None
    assert verify(vector, method="POST", target="/forest/sse", body=b"{}") is None
    assert verify(vector, require_bound=True) is VerificationFailure.BAD_SIGNATURE


# --- a running agent ----------------------------------------------------------------------

GET_VECTORS = [vector for vector in VECTORS if vector.method == "GET"]


@pytest.mark.parametrize("vector", GET_VECTORS, ids=[vector.name for vector in GET_VECTORS])
def test_an_agent_answers_the_documented_get_requests(vector: Vector) -> None:
    with freeze_time(at(vector)):
        app, _ = agent_app(auth_secret=setup().secret)
        headers = {TIMESTAMP_HEADER: vector.timestamp, SIGNATURE_HEADER: vector.signature}
        answer = app.test_client().get(vector.target, headers=headers)
        assert answer.status_code == 200, answer.data
        assert answer.get_json()["status"] == "ok"
        moved = app.test_client().get("/forest/health?wait=0", headers=headers)
    if vector.scheme == "v2":
        assert moved.status_code == 401
        assert moved.get_json() == {"error": "Unauthorized", "reason": "bad_signature"}
    else:
        assert moved.status_code == 200
