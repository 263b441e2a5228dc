"""``duet.cli.output.visible``: every control character and invisible code point an owner, a CVM
or a controller could send is shown as an escape, never passed to the terminal (issue 12, item 8)."""

from __future__ import annotations

import pytest

from duet.cli.output import visible

C0 = [chr(code) for code in range(0x20) if chr(code) not in "\n\t"]
C1 = [chr(code) for code in range(0x80, 0xA0)]
BIDI = [chr(code) for code in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C)]
INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u2028", "\u2029", "\U000e0001", "\U000e0041"]


@pytest.mark.parametrize("char", [*C0, "\x7f", *C1, *BIDI, *INVISIBLE], ids=lambda c: f"U+{ord(c):04X}")
def test_every_dangerous_code_point_is_shown_as_an_escape(char: str) -> None:
    shown = visible(f"a{char}b")
    assert char not in shown
    assert shown.startswith("a\\") and shown.endswith("b")
    assert shown.isprintable() and shown.isascii()


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("\x1b[8mhidden\x1b[0m", "\\x1b[8mhidden\\x1b[0m"),  # conceal
        ("\x1b[2K\x1b[1A", "\\x1b[2K\\x1b[1A"),  # erase the line, cursor up
        ("\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"),  # the terminal's title (OSC ... BEL)
        ("\x9b2J", "\\x9b2J"),  # the 8-bit CSI (C1)
        ("\x7f", "\\x7f"),
        ("\x00", "\\x00"),
        ("over\rwrite", "over\\rwrite"),
        ("evil\u202e}cod\u2066", "evil\\u202e}cod\\u2066"),  # Trojan Source
        ("tag\U000e0041", "tag\\U000e0041"),
        ("\ud800", "\\ud800"),  # a lone surrogate (from JSON) would not even encode
    ],
)
def test_escapes_read_like_python_escapes(text: str, shown: str) -> None:
    assert visible(text) == shown


@pytest.mark.parametrize(
    "text",
    [
        "",
        "apt-get install -y nginx",
        "printf 'a\\n' | sed 's/\\\\/x/'",
        "héllo wörld ✓ → 日本語 🙂",
        "[bold]not markup[/]",
        "a\\x1b",
    ],
)
def test_plain_text_is_unchanged(text: str) -> None:
    assert visible(text) == text
    assert visible(text, one_line=True) == text


def test_newlines_and_tabs_are_kept_in_text_of_several_lines() -> None:
    """A tab only moves the cursor right, over blanks: it hides nothing, and outputs use it."""
    assert visible("line 1\nname\tsize\nline 3\n") == "line 1\nname\tsize\nline 3\n"


def test_one_line_shows_newlines_and_tabs_too() -> None:
    """In a table cell or a heading, a newline would forge rows and a tab would shift columns."""
    assert visible("true\n1  rm -rf /\tx", one_line=True) == "true\\n1  rm -rf /\\tx"


def test_anything_else_is_shown_as_text() -> None:
    assert visible(None) == "None"
    assert visible(42) == "42"
