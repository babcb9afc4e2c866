"""Step segmentation: character spans, step-end tokens, padded step arrays."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlr.rewards.segment import split_steps, step_arrays, step_end_tokens


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a\nb\n", [(0, 2), (2, 4)]),  # the delimiter belongs to the step it ends
        ("a\n\nb", [(0, 2), (3, 4)]),  # consecutive delimiters: the empty step is skipped
        ("\n \na\n  ", [(3, 5)]),  # leading / trailing whitespace-only steps skipped
        ("one step only", [(0, 13)]),  # no delimiter: one step
        ("s1\ns2", [(0, 3), (3, 5)]),  # truncated: the last step ends at the text end
        ("", []),  # empty response: no steps
        ("  \n\t\n", []),  # whitespace only: no steps
    ],
)
def test_split_steps_golden(text, expected):
    assert split_steps(text) == expected


def test_split_steps_custom_delimiter_and_tag_mode():
    assert split_steps("x=1. y=2. ", delimiter=". ") == [(0, 5), (5, 10)]
    text = "Step 1: 2+2=4 ки\nStep 2: 4*3=12 ки"  # Math-Shepherd: the tag ends each step
    spans = split_steps(text, tag="ки")
    assert [text[a:b] for a, b in spans] == ["Step 1: 2+2=4 ки", "\nStep 2: 4*3=12 ки"]
    # in tag mode newlines are ordinary text; a tag-less tail is a truncated step
    assert split_steps("a\nb ки c", tag="ки") == [(0, 6), (6, 8)]


@pytest.mark.parametrize("kwargs", [{"delimiter": ""}, {"tag": ""}])
def test_split_steps_empty_marker_is_an_error(kwargs):
    with pytest.raises(ValueError, match="delimiter|tag"):
        split_steps("a\nb", **kwargs)


@given(st.text(alphabet="ab \n", max_size=30))
@settings(max_examples=50, deadline=None)
def test_split_steps_property(text):
    spans = split_steps(text)
    covered = set()
    prev_end = 0
    for start, end in spans:
        assert prev_end <= start < end <= len(text)
        body = text[start:end]
        assert body.strip()
        assert body.endswith("\n") or end == len(text)  # a step ends at a delimiter or the text end
        assert "\n" not in body[:-1]  # a step holds no delimiter but its own
        covered.update(range(start, end))
        prev_end = end
    # every non-whitespace character lies in some step
    assert all(i in covered for i, c in enumerate(text) if not c.isspace())


def test_step_end_tokens_golden():
    # tokens "a", "b\n", "cd", "\n", "e" of the text "ab\ncd\ne"
    text, token_ends = "ab\ncd\ne", [1, 3, 5, 6, 7]
    spans = split_steps(text)
    assert spans == [(0, 3), (3, 6), (6, 7)]
    assert step_end_tokens(spans, token_ends) == [1, 3, 4]  # truncated last step: last token
    # a token holding the end of one step and the start of the next ends the first
    assert step_end_tokens(split_steps("ab\ncd\n"), [2, 4, 6]) == [1, 2]
    # zero-width tokens (special tokens) before the end: the first token reaching it
    assert step_end_tokens([(0, 2)], [1, 2, 2]) == [1]
    assert step_end_tokens([], []) == []


def test_step_end_tokens_errors():
    with pytest.raises(ValueError, match="ends after the last token"):
        step_end_tokens([(0, 5)], [1, 2])
    with pytest.raises(ValueError, match="non-decreasing"):
        step_end_tokens([(0, 1)], [2, 1])


def test_step_arrays_golden():
    positions, mask, dropped = step_arrays([[1, 3, 4], [2], []], max_steps=3)
    np.testing.assert_array_equal(positions, [[1, 3, 4], [2, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(mask, [[True] * 3, [True, False, False], [False] * 3])
    np.testing.assert_array_equal(dropped, [0, 0, 0])
    assert positions.dtype == np.int32 and mask.dtype == bool


def test_step_arrays_keeps_first_steps_and_the_last():
    positions, mask, dropped = step_arrays([[0, 1, 2, 3, 4, 5], [7, 9]], max_steps=3)
    np.testing.assert_array_equal(positions, [[0, 1, 5], [7, 9, 0]])
    np.testing.assert_array_equal(dropped, [3, 0])
    assert mask.sum() == 5
    positions, _, dropped = step_arrays([[2, 4, 6]], max_steps=1)  # K = 1: only the last step
    np.testing.assert_array_equal(positions, [[6]])
    assert dropped.tolist() == [2]
    with pytest.raises(ValueError, match="max_steps"):
        step_arrays([[1]], max_steps=0)
