"""Unit tests of the incremental text/event-stream parser (WHATWG rules)."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from rpc_datasource.legacy.sse_parser import SseEvent, SseParser


def parse(*chunks: str) -> tuple[list[SseEvent], SseParser]:
    parser = SseParser()
    events: list[SseEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    return events, parser


def test_simple_event() -> None:
    events, _ = parse("event: update\ndata: hello\n\n")
    assert events == [SseEvent("update", "hello", None)]


def test_default_event_type_is_message() -> None:
    events, _ = parse("data: hello\n\n")
    assert events == [SseEvent("message", "hello", None)]


def test_events_are_returned_by_the_feed_that_completes_them() -> None:
    parser = SseParser()
    assert parser.feed("data: one\n") == []
    assert parser.feed("\n") == [SseEvent("message", "one")]
    assert parser.feed("data: two\n\ndata: three\n\n") == [
        SseEvent("message", "two"),
        SseEvent("message", "three"),
    ]


def test_multi_line_data_joined_with_lf() -> None:
    events, _ = parse("data: first\ndata: second\ndata: third\n\n")
    assert events == [SseEvent("message", "first\nsecond\nthird")]


def test_trailing_empty_data_line() -> None:
    events, _ = parse("data: a\ndata:\n\n")
    assert events == [SseEvent("message", "a\n")]


def test_only_empty_data_dispatches_empty_string() -> None:
    events, _ = parse("data:\n\n")
    assert events == [SseEvent("message", "")]


def test_data_without_colon_is_an_empty_data_line() -> None:
    events, _ = parse("data\n\n")
    assert events == [SseEvent("message", "")]
    events, _ = parse("data: x\ndata\n\n")
    assert events == [SseEvent("message", "x\n")]


def test_only_one_leading_space_is_stripped() -> None:
    events, _ = parse("data:   three spaces\n\n")
    assert events == [SseEvent("message", "  three spaces")]


def test_no_space_after_colon() -> None:
    events, _ = parse("event:tick\ndata:value\n\n")
    assert events == [SseEvent("tick", "value")]


def test_trailing_spaces_are_kept() -> None:
    events, _ = parse("data: value  \n\n")
    assert events == [SseEvent("message", "value  ")]


def test_value_may_contain_colons() -> None:
    events, _ = parse("data: a: b:c\n\n")
    assert events == [SseEvent("message", "a: b:c")]


def test_comment_lines_are_ignored() -> None:
    events, _ = parse(": keep-alive\ndata: x\n: another\n\n:\n\n")
    assert events == [SseEvent("message", "x")]


def test_event_without_data_is_not_dispatched() -> None:
    events, _ = parse("event: lonely\n\n")
    assert events == []


def test_event_type_without_data_does_not_leak() -> None:
    events, _ = parse("event: lonely\n\ndata: next\n\n")
    assert events == [SseEvent("message", "next")]


def test_event_type_does_not_carry_over_to_the_next_event() -> None:
    events, _ = parse("event: first\ndata: a\n\ndata: b\n\n")
    assert events == [SseEvent("first", "a"), SseEvent("message", "b")]


def test_last_event_type_line_wins() -> None:
    events, _ = parse("event: one\nevent: two\ndata: x\n\n")
    assert events == [SseEvent("two", "x")]


def test_empty_event_type_means_message() -> None:
    events, _ = parse("event:\ndata: x\n\n")
    assert events == [SseEvent("message", "x")]


def test_id_sets_last_event_id_and_persists() -> None:
    events, parser = parse("id: 7\ndata: a\n\ndata: b\n\nid: 8\ndata: c\n\n")
    assert events == [
        SseEvent("message", "a", "7"),
        SseEvent("message", "b", "7"),
        SseEvent("message", "c", "8"),
    ]
    assert parser.last_event_id == "8"


def test_id_on_an_event_without_data_still_updates_last_event_id() -> None:
    events, parser = parse("id: 5\n\ndata: x\n\n")
    assert parser.last_event_id == "5"
    assert events == [SseEvent("message", "x", "5")]


def test_id_with_nul_is_ignored() -> None:
    events, parser = parse("id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n")
    assert events == [SseEvent("message", "a", "1"), SseEvent("message", "b", "1")]
    assert parser.last_event_id == "1"


def test_id_with_nul_before_any_id_leaves_none() -> None:
    events, parser = parse("id: \x00\ndata: a\n\n")
    assert events == [SseEvent("message", "a", None)]
    assert parser.last_event_id is None


def test_retry_with_digits_sets_retry_ms() -> None:
    events, parser = parse("retry: 2500\n\n")
    assert parser.retry_ms == 2500
    assert events == []


def test_retry_last_valid_value_wins() -> None:
    _, parser = parse("retry: 1000\nretry: 3000\n\n")
    assert parser.retry_ms == 3000


def test_retry_with_non_digits_is_ignored() -> None:
    _, parser = parse("retry: 1000\n\nretry: 2.5\nretry: -5\nretry: soon\nretry: 10s\nretry:\n\n")
    assert parser.retry_ms == 1000


def test_retry_with_non_ascii_digits_is_ignored() -> None:
    _, parser = parse("retry: \u0661\u0662\u0663\n\n")  # Arabic-Indic digits
    assert parser.retry_ms is None


def test_retry_is_none_until_set() -> None:
    _, parser = parse("data: x\n\n")
    assert parser.retry_ms is None


def test_unknown_fields_are_ignored() -> None:
    events, parser = parse("foo: bar\ndata: x\nDATA: y\nEvent: nope\nbaz\n\n")
    assert events == [SseEvent("message", "x")]
    assert parser.last_event_id is None
    assert parser.retry_ms is None


def test_crlf_line_endings() -> None:
    events, _ = parse("event: a\r\ndata: 1\r\ndata: 2\r\n\r\n")
    assert events == [SseEvent("a", "1\n2")]


def test_cr_only_line_endings() -> None:
    events, _ = parse("event: a\rdata: 1\rdata: 2\r\r")
    assert events == [SseEvent("a", "1\n2")]


def test_lf_line_endings() -> None:
    events, _ = parse("event: a\ndata: 1\ndata: 2\n\n")
    assert events == [SseEvent("a", "1\n2")]


def test_mixed_line_endings() -> None:
    events, _ = parse("data: 1\rdata: 2\r\ndata: 3\n\r\n")
    assert events == [SseEvent("message", "1\n2\n3")]


def test_cr_at_chunk_end_then_lf_is_one_line_break() -> None:
    # "data: x\r" + "\ndata: y\r\n\r\n": the CR LF across the chunks ends one line only;
    # were it two, the empty line would dispatch "x" alone.
    events, _ = parse("data: x\r", "\ndata: y\r\n\r\n")
    assert events == [SseEvent("message", "x\ny")]


def test_cr_at_chunk_end_then_lf_then_blank_line() -> None:
    events, _ = parse("data: x\r", "\n\r\n")
    assert events == [SseEvent("message", "x")]


def test_empty_chunk_between_cr_and_lf_keeps_one_line_break() -> None:
    events, _ = parse("data: x\r", "", "\ndata: y\n\n")
    assert events == [SseEvent("message", "x\ny")]


def test_cr_at_chunk_end_then_cr_is_two_line_breaks() -> None:
    events, _ = parse("data: x\r", "\rdata: y\n\n")
    assert events == [SseEvent("message", "x"), SseEvent("message", "y")]


def test_lf_after_cr_only_swallowed_right_after_the_cr() -> None:
    # The CR LF pair is one break; the LF at the start of the third chunk is a second one.
    events, _ = parse("data: x\r", "\n", "\n")
    assert events == [SseEvent("message", "x")]


def test_field_split_across_chunks() -> None:
    events, _ = parse("ev", "ent: up", "date\nda", "ta: he", "llo\n", "\n")
    assert events == [SseEvent("update", "hello")]


def test_leading_bom_is_stripped() -> None:
    events, _ = parse("\ufeffdata: x\n\n")
    assert events == [SseEvent("message", "x")]


def test_leading_bom_after_an_empty_first_chunk_is_stripped() -> None:
    events, _ = parse("", "\ufeffdata: x\n\n")
    assert events == [SseEvent("message", "x")]


def test_bom_only_stripped_at_stream_start() -> None:
    # Later, "\ufeffdata" is an unknown field name, so that line is ignored.
    events, _ = parse("data: a\n\n", "\ufeffdata: b\n\n")
    assert events == [SseEvent("message", "a")]


def test_only_one_bom_is_stripped() -> None:
    events, _ = parse("\ufeff\ufeffdata: x\n\ndata: y\n\n")
    assert events == [SseEvent("message", "y")]


def test_bom_inside_a_value_is_kept() -> None:
    events, _ = parse("data: \ufeffx\n\n")
    assert events == [SseEvent("message", "\ufeffx")]


def test_incomplete_final_event_is_not_dispatched() -> None:
    events, _ = parse("data: done\n\ndata: partial\n")
    assert events == [SseEvent("message", "done")]
    events, _ = parse("data: partial")
    assert events == []


def test_empty_feed_returns_nothing() -> None:
    parser = SseParser()
    assert parser.feed("") == []
    assert parser.last_event_id is None


# --- the agent's real blocks ---------------------------------------------------------------


def test_agent_heartbeat_block() -> None:
    events, _ = parse('event: heartbeat\ndata: ""\n\n')
    assert events == [SseEvent("heartbeat", '""', None)]


def test_agent_stop_block() -> None:
    events, _ = parse('event: RpcServerStop\ndata: {"event": "RpcServerStop"}\n\n')
    assert events == [SseEvent("RpcServerStop", '{"event": "RpcServerStop"}', None)]


def test_agent_stream_heartbeats_then_stop() -> None:
    heartbeat = 'event: heartbeat\ndata: ""\n\n'
    stop = 'event: RpcServerStop\ndata: {"event": "RpcServerStop"}\n\n'
    events, _ = parse(heartbeat, heartbeat, stop)
    assert [e.event for e in events] == ["heartbeat", "heartbeat", "RpcServerStop"]


# --- chunking does not matter --------------------------------------------------------------

STREAM = (
    "\ufeff: comment\r\n"
    "retry: 1500\r\n"
    "id: 1\r"
    "event: update\n"
    "data: first\r\n"
    "data:  second\r"
    "\r"
    "data: x\n"
    "\n"
    "id: 2\r\n"
    "data\r\n"
    "\r\n"
    "event: ignored\n"
    "\n"
    'event: heartbeat\r\ndata: ""\r\n\r\n'
    "data: tail\n"
)
STREAM_EVENTS = [
    SseEvent("update", "first\n second", "1"),
    SseEvent("message", "x", "1"),
    SseEvent("message", "", "2"),
    SseEvent("heartbeat", '""', "2"),
]


def check_stream(chunks: list[str]) -> None:
    events, parser = parse(*chunks)
    assert events == STREAM_EVENTS
    assert parser.last_event_id == "2"
    assert parser.retry_ms == 1500


def test_stream_all_at_once() -> None:
    check_stream([STREAM])


def test_stream_character_by_character() -> None:
    check_stream(list(STREAM))


def test_stream_character_by_character_with_empty_chunks() -> None:
    chunks: list[str] = []
    for char in STREAM:
        chunks += ["", char]
    check_stream([*chunks, ""])


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=40))
def test_stream_split_at_arbitrary_points(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    chunks = [STREAM[a:b] for a, b in pairwise(bounds)]
    assert "".join(chunks) == STREAM
    check_stream(chunks)
