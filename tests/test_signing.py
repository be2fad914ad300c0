"""Unit tests of rpc_common.signing: the wire format, every refusal reason, the clock window."""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from freezegun import freeze_time
from hypothesis import given, settings
from hypothesis import strategies as st

from rpc_common.signing import (
    BOUND_PREFIX,
    DEFAULT_CLOCK_SKEW,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureScheme,
    VerificationFailure,
    format_timestamp,
    parse_timestamp,
    sign_bound,
    sign_original,
    signed_headers,
    verify_request,
)
from tests.support import OTHER_SECRET, TEST_SECRET

NOW = datetime(2026, 11, 21, 9, 30, 0, 123000, tzinfo=UTC)
NOW_ISO = "2026-11-21T09:30:00.123Z"
METHOD = "POST"
TARGET = "/forest/rpc?collection=orders&page=2"
BODY = b'{"ids": [1, 2, 3]}'
SCHEMES: tuple[SignatureScheme, ...] = ("v1", "v2")


def _hand_hmac(secret: str, message: str) -> str:
    """HMAC-SHA256, lowercase hex, computed straight from the standard library."""
    return hmac.new(secret.encode("utf-8"), message.encode("utf-8"), hashlib.sha256).hexdigest()


def _verify(
    timestamp: str | None,
    signature: str | None,
    *,
    method: str = METHOD,
    target: str = TARGET,
    body: bytes = BODY,
    secrets: list[str] | None = None,
    require_bound: bool = False,
    now: datetime | None = NOW,
) -> VerificationFailure | None:
    return verify_request(
        timestamp,
        signature,
        method=method,
        target=target,
        body=body,
        secrets=[TEST_SECRET] if secrets is None else secrets,
        require_bound=require_bound,
        now=now,
    )


def _headers(
    scheme: SignatureScheme, *, secret: str = TEST_SECRET, now: datetime = NOW
) -> dict[str, str]:
    return signed_headers(secret, method=METHOD, target=TARGET, body=BODY, scheme=scheme, now=now)


# --- wire format, computed by hand -------------------------------------------------------------


def test_original_scheme_is_hmac_of_the_timestamp_alone() -> None:
    expected = hmac.new(
        TEST_SECRET.encode("utf-8"), NOW_ISO.encode("utf-8"), hashlib.sha256
    ).hexdigest()

    headers = signed_headers(TEST_SECRET, method=METHOD, target=TARGET, scheme="v1", now=NOW)

    assert headers == {TIMESTAMP_HEADER: NOW_ISO, SIGNATURE_HEADER: expected}
    assert sign_original(TEST_SECRET, NOW_ISO) == expected
    assert re.fullmatch(r"[0-9a-f]{64}", expected)
    assert _verify(NOW_ISO, expected) is None


def test_bound_scheme_is_v2_hmac_of_timestamp_method_target_and_body_digest() -> None:
    body_sha = hashlib.sha256(BODY).hexdigest()
    message = f"{NOW_ISO}\n{METHOD}\n{TARGET}\n{body_sha}"
    expected = (
        "v2="
        + hmac.new(TEST_SECRET.encode("utf-8"), message.encode("utf-8"), hashlib.sha256).hexdigest()
    )

    headers = signed_headers(
        TEST_SECRET, method="post", target=TARGET, body=BODY, scheme="v2", now=NOW
    )

    assert headers == {TIMESTAMP_HEADER: NOW_ISO, SIGNATURE_HEADER: expected}
    assert sign_bound(TEST_SECRET, NOW_ISO, "post", TARGET, BODY) == expected
    assert _verify(NOW_ISO, expected) is None


def test_bound_scheme_without_body_hashes_the_empty_body() -> None:
    empty_sha = hashlib.sha256(b"").hexdigest()
    expected = "v2=" + _hand_hmac(TEST_SECRET, f"{NOW_ISO}\nGET\n/forest/health\n{empty_sha}")

    assert sign_bound(TEST_SECRET, NOW_ISO, "GET", "/forest/health") == expected
    assert _verify(NOW_ISO, expected, method="GET", target="/forest/health", body=b"") is None


def test_signed_headers_default_to_the_bound_scheme() -> None:
    headers = signed_headers(TEST_SECRET, now=NOW)

    result = _verify(
        headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER], method="GET", target="/", body=b""
    )

    assert headers[SIGNATURE_HEADER].startswith(BOUND_PREFIX)
    assert result is None


def test_secret_and_message_are_utf8_encoded() -> None:
    secret = "clé-secrète-ünïcødé-0123456789-abcdef"
    timestamp = NOW_ISO
    expected = _hand_hmac(secret, timestamp)

    assert sign_original(secret, timestamp) == expected
    assert _verify(timestamp, expected, secrets=[secret]) is None


# --- round trips and timestamp format ----------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_signed_headers_round_trip(scheme: SignatureScheme) -> None:
    headers = _headers(scheme)

    assert _verify(headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER]) is None


@pytest.mark.parametrize("scheme", SCHEMES)
def test_signed_headers_round_trip_on_the_real_clock(scheme: SignatureScheme) -> None:
    headers = signed_headers(TEST_SECRET, method="GET", target="/forest/health", scheme=scheme)

    result = verify_request(
        headers[TIMESTAMP_HEADER],
        headers[SIGNATURE_HEADER],
        method="GET",
        target="/forest/health",
        body=b"",
        secrets=[TEST_SECRET],
    )

    assert result is None


@freeze_time("2026-11-21T09:30:00.456789Z")
def test_signed_headers_use_the_current_time_when_none_is_given() -> None:
    headers = signed_headers(TEST_SECRET, scheme="v1")

    assert headers[TIMESTAMP_HEADER] == "2026-11-21T09:30:00.456Z"


def test_format_timestamp_shape() -> None:
    formatted = format_timestamp(NOW)

    assert formatted == NOW_ISO
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z", formatted)


def test_format_timestamp_converts_to_utc_and_truncates_to_milliseconds() -> None:
    plus_two = timezone(timedelta(hours=2))
    moment = datetime(2026, 11, 21, 11, 30, 0, 999999, tzinfo=plus_two)

    assert format_timestamp(moment) == "2026-11-21T09:30:00.999Z"
    assert format_timestamp(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05.000Z"


@pytest.mark.parametrize(
    ("text", "microsecond"),
    [
        pytest.param("2026-11-21T09:30:00.1Z", 100_000, id="tenths"),
        pytest.param("2026-11-21T09:30:00.123456Z", 123_456, id="micro"),
        pytest.param("2026-11-21T09:30:00.1234567Z", 123_456, id="7-digits"),
        pytest.param("2026-11-21T09:30:00.123456789Z", 123_456, id="nano-go-java"),
        pytest.param("2026-11-21T09:30:00,123456789+00:00", 123_456, id="nano-comma"),
    ],
)
def test_fractions_up_to_nanoseconds_are_read_to_the_microsecond(
    text: str, microsecond: int
) -> None:
    assert parse_timestamp(text) == NOW.replace(microsecond=microsecond)


def test_more_than_nine_fractional_digits_are_malformed() -> None:
    assert parse_timestamp("2026-11-21T09:30:00.1234567891Z") is None


# --- offsets -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-21T09:30:00.123Z",
        "2026-11-21T09:30:00.123+00:00",
        "2026-11-21T11:30:00.123+02:00",
        "2026-11-21T04:30:00.123-05:00",
        "2026-11-21T15:00:00.123+05:30",
    ],
)
def test_timestamp_with_an_offset_is_read_as_that_instant(text: str) -> None:
    assert parse_timestamp(text) == NOW

    signature = sign_original(TEST_SECRET, text)
    assert _verify(text, signature) is None
    assert _verify(text, sign_bound(TEST_SECRET, text, METHOD, TARGET, BODY)) is None


def test_non_utc_offset_is_not_read_as_utc_wall_clock() -> None:
    # 09:30 at +02:00 is 07:30 UTC, two hours before NOW: out of the 300 s window.
    text = "2026-11-21T09:30:00.123+02:00"

    assert parse_timestamp(text) == NOW - timedelta(hours=2)
    assert (
        _verify(text, sign_original(TEST_SECRET, text))
        == VerificationFailure.TIMESTAMP_OUT_OF_WINDOW
    )


# --- missing headers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timestamp", "signature"),
    [
        (None, "v2=" + "0" * 64),
        (NOW_ISO, None),
        (None, None),
        ("", "v2=" + "0" * 64),
        (NOW_ISO, ""),
        ("", ""),
        (None, ""),
        ("", None),
    ],
)
def test_missing_or_empty_headers(timestamp: str | None, signature: str | None) -> None:
    assert _verify(timestamp, signature) == VerificationFailure.MISSING_HEADERS


def test_missing_signature_wins_over_a_malformed_timestamp() -> None:
    assert _verify("garbage", None) == VerificationFailure.MISSING_HEADERS


# --- malformed timestamps ----------------------------------------------------------------------


def _digits(text: str, zero: int) -> str:
    """`text` with its ASCII digits replaced by those of the script whose zero is `zero`."""
    return text.translate({ord("0") + n: zero + n for n in range(10)})


@pytest.mark.parametrize(
    "timestamp",
    [
        pytest.param("2026-11-21T09:30:00.123", id="no-zone"),
        pytest.param("2026-11-21T09:30:00", id="no-zone-no-fraction"),
        pytest.param("2026-11-21", id="date-only"),
        pytest.param("09:30:00Z", id="time-only"),
        pytest.param("garbage", id="garbage"),
        pytest.param("not-a-timestamp-Z", id="garbage-with-z"),
        pytest.param(" ", id="blank"),
        pytest.param("1763717400", id="epoch-seconds"),
        pytest.param("Sat, 21 Nov 2026 09:30:00 GMT", id="http-date"),
        pytest.param("2026-13-21T09:30:00Z", id="month-13"),
        pytest.param("2026-11-21T25:30:00Z", id="hour-25"),
        pytest.param("2026-11-21T09:30:00+24:00", id="offset-24h"),
        pytest.param("0000-01-01T00:00:00Z", id="year-zero"),
        pytest.param("99999-01-01T00:00:00Z", id="year-99999"),
        pytest.param("-2026-11-21T09:30:00Z", id="negative-year"),
        pytest.param("2026-11-21T09:30:00Z" + "0" * 10_000, id="huge-suffix"),
        pytest.param("9" * 1_000_000, id="huge-digits"),
        pytest.param(_digits("2026-11-21T09:30:00Z", 0xFF10), id="fullwidth-digits"),
        pytest.param(_digits("2026-11-21T09:30:00Z", 0x0660), id="arabic-indic-digits"),
        pytest.param(_digits("2026-11-21T09:30:00Z", 0x0966), id="devanagari-digits"),
        pytest.param("2026-11-21T09:30:00.123Z\u200b", id="zero-width-space"),
        pytest.param("\x002026-11-21T09:30:00.123Z", id="leading-nul"),
        pytest.param("\n2026-11-21T09:30:00.123Z", id="leading-newline"),
        pytest.param("2026-11-21\x00T09:30:00.123Z", id="nul-in-date"),
        pytest.param("2026-11-21T09:30:00.123\x00Z", id="nul-after-fraction"),
        # The next four are accepted by CPython 3.11's lenient datetime.fromisoformat.
        pytest.param("2026-11-21T09:30:00\x00Z", id="nul-before-zone"),
        pytest.param("2026-11-21T09:30:00\nZ", id="newline-before-zone"),
        pytest.param("2026-11-21T09:30:00.123Z\x00", id="trailing-nul"),
        pytest.param("2026-11-21T09:30:00xZ", id="stray-letter-before-zone"),
    ],
)
def test_malformed_timestamp(timestamp: str) -> None:
    # Signed correctly, so nothing but the timestamp's shape can refuse it.
    for signature in (
        sign_original(TEST_SECRET, timestamp),
        sign_bound(TEST_SECRET, timestamp, METHOD, TARGET, BODY),
    ):
        assert _verify(timestamp, signature) == VerificationFailure.MALFORMED_TIMESTAMP


@pytest.mark.parametrize(
    "timestamp",
    [
        "0001-01-01T00:00:00+01:00",  # before datetime.min once converted to UTC
        "9999-12-31T23:59:59-01:00",  # after datetime.max once converted to UTC
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999Z",
    ],
)
def test_extreme_instants_are_refused_without_raising(timestamp: str) -> None:
    result = _verify(timestamp, sign_original(TEST_SECRET, timestamp))

    assert result in {
        VerificationFailure.MALFORMED_TIMESTAMP,
        VerificationFailure.TIMESTAMP_OUT_OF_WINDOW,
    }


# --- the clock window --------------------------------------------------------------------------

FROZEN = "2026-11-21T09:30:00Z"
FROZEN_AT = datetime(2026, 11, 21, 9, 30, tzinfo=UTC)


def _signed_at(offset_s: float, scheme: SignatureScheme = "v2") -> dict[str, str]:
    return _headers(scheme, now=FROZEN_AT + timedelta(seconds=offset_s))


def _verify_on_clock(
    headers: dict[str, str], allowed_clock_skew: float = DEFAULT_CLOCK_SKEW
) -> VerificationFailure | None:
    return verify_request(
        headers[TIMESTAMP_HEADER],
        headers[SIGNATURE_HEADER],
        method=METHOD,
        target=TARGET,
        body=BODY,
        secrets=[TEST_SECRET],
        allowed_clock_skew=allowed_clock_skew,
    )


def test_default_skew_is_300_seconds() -> None:
    assert DEFAULT_CLOCK_SKEW == 300


@pytest.mark.parametrize(
    ("offset_s", "expected"),
    [
        (-270, None),
        (-330, VerificationFailure.TIMESTAMP_OUT_OF_WINDOW),
        (270, None),
        (330, VerificationFailure.TIMESTAMP_OUT_OF_WINDOW),
        (0, None),
        (-86_400, VerificationFailure.TIMESTAMP_OUT_OF_WINDOW),
        (86_400 * 365, VerificationFailure.TIMESTAMP_OUT_OF_WINDOW),
    ],
)
@pytest.mark.parametrize("scheme", SCHEMES)
@freeze_time(FROZEN)
def test_default_window(
    offset_s: float, expected: VerificationFailure | None, scheme: SignatureScheme
) -> None:
    assert _verify_on_clock(_signed_at(offset_s, scheme)) == expected


@pytest.mark.parametrize("direction", [-1, 1])
@freeze_time(FROZEN)
def test_window_edge_is_inclusive(direction: int) -> None:
    at_edge = _signed_at(direction * DEFAULT_CLOCK_SKEW)
    just_past = _signed_at(direction * (DEFAULT_CLOCK_SKEW + 0.001))

    assert _verify_on_clock(at_edge) is None
    assert _verify_on_clock(just_past) == VerificationFailure.TIMESTAMP_OUT_OF_WINDOW


@pytest.mark.parametrize("direction", [-1, 1])
@freeze_time(FROZEN)
def test_custom_skew(direction: int) -> None:
    skew = 30.0

    assert _verify_on_clock(_signed_at(direction * 29), skew) is None
    assert _verify_on_clock(_signed_at(direction * 30), skew) is None
    assert (
        _verify_on_clock(_signed_at(direction * 31), skew)
        == VerificationFailure.TIMESTAMP_OUT_OF_WINDOW
    )
    # A wider custom skew accepts what the default refuses.
    assert _verify_on_clock(_signed_at(direction * 900), 1_000) is None


def test_window_follows_the_clock() -> None:
    headers = _signed_at(0)

    with freeze_time(FROZEN_AT + timedelta(seconds=299)):
        assert _verify_on_clock(headers) is None
    with freeze_time(FROZEN_AT + timedelta(seconds=301)):
        assert _verify_on_clock(headers) == VerificationFailure.TIMESTAMP_OUT_OF_WINDOW


def test_out_of_window_is_reported_before_the_signature_is_checked() -> None:
    stale = format_timestamp(NOW - timedelta(hours=1))

    assert _verify(stale, "v2=" + "0" * 64) == VerificationFailure.TIMESTAMP_OUT_OF_WINDOW


# --- bad signatures ----------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_wrong_secret(scheme: SignatureScheme) -> None:
    headers = _headers(scheme, secret=OTHER_SECRET)

    result = _verify(headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER])

    assert result == VerificationFailure.BAD_SIGNATURE


@pytest.mark.parametrize("scheme", SCHEMES)
def test_tampered_timestamp(scheme: SignatureScheme) -> None:
    headers = _headers(scheme)
    # Still within the window, still well formed, but not what was signed.
    tampered = format_timestamp(NOW + timedelta(seconds=1))

    assert _verify(tampered, headers[SIGNATURE_HEADER]) == VerificationFailure.BAD_SIGNATURE


@pytest.mark.parametrize("scheme", SCHEMES)
def test_same_instant_written_differently_is_a_different_message(scheme: SignatureScheme) -> None:
    # The signature covers the header exactly as sent, not the instant it denotes.
    headers = _headers(scheme)
    same_instant = "2026-11-21T09:30:00.123+00:00"

    assert _verify(same_instant, headers[SIGNATURE_HEADER]) == VerificationFailure.BAD_SIGNATURE


@pytest.mark.parametrize(
    ("method", "target", "body"),
    [
        pytest.param("GET", TARGET, BODY, id="method"),
        pytest.param("DELETE", TARGET, BODY, id="method-delete"),
        pytest.param(METHOD, "/forest/rpc?collection=orders&page=3", BODY, id="query"),
        pytest.param(METHOD, "/forest/other?collection=orders&page=2", BODY, id="path"),
        pytest.param(METHOD, "/forest/rpc", BODY, id="query-dropped"),
        pytest.param(METHOD, TARGET, b'{"ids": [1, 2, 4]}', id="body"),
        pytest.param(METHOD, TARGET, b"", id="body-dropped"),
        pytest.param(METHOD, TARGET, BODY + b" ", id="body-extended"),
    ],
)
def test_v2_binds_method_target_and_body(method: str, target: str, body: bytes) -> None:
    headers = _headers("v2")

    result = _verify(
        headers[TIMESTAMP_HEADER],
        headers[SIGNATURE_HEADER],
        method=method,
        target=target,
        body=body,
    )

    assert result == VerificationFailure.BAD_SIGNATURE


def test_v2_method_case_does_not_matter() -> None:
    headers = _headers("v2")

    assert _verify(headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER], method="post") is None


def test_original_scheme_does_not_bind_the_request() -> None:
    # The documented weakness of the original scheme: any request may reuse the signature.
    headers = _headers("v1")

    result = _verify(
        headers[TIMESTAMP_HEADER],
        headers[SIGNATURE_HEADER],
        method="DELETE",
        target="/elsewhere",
        body=b"other",
    )

    assert result is None


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param("é" * 64, id="non-ascii"),
        pytest.param("v2=" + "é" * 64, id="v2-non-ascii"),
        pytest.param("签名" * 32, id="cjk"),
        pytest.param("\x00" * 64, id="nuls"),
        pytest.param("v2=", id="v2-empty"),
        pytest.param("v2", id="v2-no-equals"),
        pytest.param("0" * 64, id="zeros"),
        pytest.param("x" * 100_000, id="huge"),
        pytest.param(" ", id="blank"),
    ],
)
def test_odd_signature_values_are_bad_signatures(signature: str) -> None:
    assert _verify(NOW_ISO, signature) == VerificationFailure.BAD_SIGNATURE
    assert _verify(NOW_ISO, signature, require_bound=True) == VerificationFailure.BAD_SIGNATURE


def test_non_ascii_lookalike_of_a_valid_signature_is_refused() -> None:
    valid = sign_original(TEST_SECRET, NOW_ISO)
    lookalike = valid[:-1] + "\uff10"  # fullwidth zero in place of the last hex digit

    assert _verify(NOW_ISO, lookalike) == VerificationFailure.BAD_SIGNATURE


def test_lone_surrogate_in_signature_is_a_bad_signature_not_an_exception() -> None:
    # "\udc80".."\udcff" survive the surrogateescape encoding; other lone surrogates must too.
    for signature in ("\udc80" * 64, "\ud800", "v2=\ud800", "v2=" + "\udfff" * 64):
        assert _verify(NOW_ISO, signature) == VerificationFailure.BAD_SIGNATURE


def test_scheme_prefix_must_match_the_scheme() -> None:
    original = sign_original(TEST_SECRET, NOW_ISO)
    bound = sign_bound(TEST_SECRET, NOW_ISO, METHOD, TARGET, BODY)

    assert _verify(NOW_ISO, BOUND_PREFIX + original) == VerificationFailure.BAD_SIGNATURE
    assert _verify(NOW_ISO, bound.removeprefix(BOUND_PREFIX)) == VerificationFailure.BAD_SIGNATURE


def test_no_secrets_accepts_nothing() -> None:
    headers = _headers("v2")

    result = _verify(headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER], secrets=[])

    assert result == VerificationFailure.BAD_SIGNATURE


# --- require_bound -----------------------------------------------------------------------------


def test_require_bound_refuses_the_original_scheme() -> None:
    headers = _headers("v1")

    assert _verify(headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER]) is None
    assert (
        _verify(headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER], require_bound=True)
        == VerificationFailure.BAD_SIGNATURE
    )


def test_require_bound_accepts_v2() -> None:
    headers = _headers("v2")

    assert _verify(headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER], require_bound=True) is None


def test_require_bound_still_checks_v2_signatures() -> None:
    headers = _headers("v2", secret=OTHER_SECRET)

    assert (
        _verify(headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER], require_bound=True)
        == VerificationFailure.BAD_SIGNATURE
    )


# --- key rotation ------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_previous_secret_verifies_while_listed(scheme: SignatureScheme) -> None:
    headers = _headers(scheme, secret=OTHER_SECRET)
    ts, sig = headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER]

    assert _verify(ts, sig, secrets=[TEST_SECRET, OTHER_SECRET]) is None
    assert _verify(ts, sig, secrets=[TEST_SECRET]) == VerificationFailure.BAD_SIGNATURE


@pytest.mark.parametrize("scheme", SCHEMES)
def test_current_secret_verifies_with_previous_ones_listed(scheme: SignatureScheme) -> None:
    headers = _headers(scheme)

    result = _verify(
        headers[TIMESTAMP_HEADER],
        headers[SIGNATURE_HEADER],
        secrets=[TEST_SECRET, OTHER_SECRET],
    )

    assert result is None


def test_secrets_may_be_any_iterable() -> None:
    headers = _headers("v2", secret=OTHER_SECRET)

    result = verify_request(
        headers[TIMESTAMP_HEADER],
        headers[SIGNATURE_HEADER],
        method=METHOD,
        target=TARGET,
        body=BODY,
        secrets=(s for s in (TEST_SECRET, OTHER_SECRET)),
        now=NOW,
    )

    assert result is None


# --- property: never raises --------------------------------------------------------------------

_VALID_SIGNATURES = [
    sign_original(TEST_SECRET, NOW_ISO),
    sign_bound(TEST_SECRET, NOW_ISO, METHOD, TARGET, BODY),
]
_timestamps = st.one_of(
    st.none(),
    st.text(),
    st.just(NOW_ISO),
    st.text(max_size=8).map(lambda tail: NOW_ISO[:19] + tail),
    st.text(max_size=8).map(lambda tail: NOW_ISO + tail),
    st.datetimes(timezones=st.just(UTC)).map(format_timestamp),
)
_signatures = st.one_of(
    st.none(),
    st.text(),
    st.text().map(lambda rest: BOUND_PREFIX + rest),
    st.sampled_from(_VALID_SIGNATURES),
    st.sampled_from(_VALID_SIGNATURES).map(lambda sig: sig + "0"),
)


@settings(max_examples=300, deadline=None)
@given(
    timestamp=_timestamps,
    signature=_signatures,
    require_bound=st.booleans(),
    skew=st.floats(min_value=0, max_value=1e6, allow_nan=False),
)
def test_verify_request_never_raises(
    timestamp: str | None, signature: str | None, require_bound: bool, skew: float
) -> None:
    result = verify_request(
        timestamp,
        signature,
        method=METHOD,
        target=TARGET,
        body=BODY,
        secrets=[TEST_SECRET, OTHER_SECRET],
        allowed_clock_skew=skew,
        require_bound=require_bound,
        now=NOW,
    )

    assert result is None or isinstance(result, VerificationFailure)
    if result is None and require_bound:
        assert signature is not None and signature.startswith(BOUND_PREFIX)
    if result is None:
        # Only an exact, current signature over the exact timestamp can be accepted.
        assert timestamp is not None and signature in {
            sign_original(TEST_SECRET, timestamp),
            sign_bound(TEST_SECRET, timestamp, METHOD, TARGET, BODY),
            sign_original(OTHER_SECRET, timestamp),
            sign_bound(OTHER_SECRET, timestamp, METHOD, TARGET, BODY),
        }
