"""Hand-picked odd header values (NUL, huge, odd digits and dates) that never give a 5xx."""

from __future__ import annotations

FULLWIDTH_DIGITS = {ord("0") + n: 0xFF10 + n for n in range(10)}


ARABIC_INDIC_DIGITS = {ord("0") + n: 0x0660 + n for n in range(10)}


HAND_PICKED = [
    "",
    " ",
    "\t",
    "\x00",
    "\x00" * 64,
    "v2=",
    "v2=\x00",
    "v2=" + "0" * 64,
    "v2=" + "zz" * 32,
    "v2=" + "é" * 64,
    "v2=v2=v2=",
    "V2=" + "a" * 64,
    "a" * 64,
    "g" * 64,
    "é" * 64,
    "x" * 100_000,
    "v2=" + "f" * 100_000,
    "2026-11-21T09:30:00.123Z" + " " * 1_000,
    "2026-11-21T09:30:00.123Z\x00",
    "\x7f\x80\x9f\xa0\xff",
    "\xff" * 200,
    "\u202e\u200b\ufeff\ufffd\uffff",
    "".join(map(chr, range(0x1D518, 0x1D520))) + " \U0001f680\U0001f525",  # Fraktur, emoji
    "e\u0301\u0301\u0301\u0301",
    "2026-11-21T09:30:00Z".translate(FULLWIDTH_DIGITS),
    "2026-11-21T09:30:00Z".translate(ARABIC_INDIC_DIGITS),
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+23:59",
    "9999-12-31T23:59:59-23:59",
    "9999-12-31T23:59:59.999999Z",
    "+275760-09-13T00:00:00Z",
    "2026-02-30T00:00:00Z",
    "2026-11-21T09:30:00.123456789Z",
    "2026-11-21T24:00:00Z",
    "2026-11-21T09:30:00+99:99",
    "NaN",
    "inf",
    "-1",
    "1e309",
    "\r\n",
    "a\r\nX-Injected: 1",
    "%00%ff",
]
