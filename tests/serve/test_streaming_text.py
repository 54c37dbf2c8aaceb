"""Streamed text: the pieces add up to the whole answer, and a long answer costs its length once."""

from __future__ import annotations

from slmops_pipelines.chat.session import TextStream
from tests.conftest import tone_texts
from tests.tiny import build_tokenizer


class CountingTokenizer:
    """The tiny tokenizer, counting the ids it is asked to decode."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.decoded = tokenizer, 0

    def decode(self, ids: list[int], **kw) -> str:
        self.decoded += len(ids)
        return self.tokenizer.decode(ids, **kw)


def test_pieces_add_up_to_the_whole_text_split_characters_included():
    tokenizer = build_tokenizer(tone_texts())
    text = "Thanks — we’ll fix it. Ça marche 👍 naïve café\n" * 3  # bytes of one character over tokens
    ids = tokenizer.encode(text, add_special_tokens=False)
    stream = TextStream(tokenizer)
    pieces = [stream.push(i) for i in [*ids, tokenizer.eos_token_id]]
    assert "".join(pieces) == text == stream.text()
    assert all("\ufffd" not in piece for piece in pieces)


def test_a_long_answer_is_decoded_in_time_that_grows_with_its_length():
    tokenizer = CountingTokenizer(build_tokenizer(tone_texts()))
    ids = tokenizer.tokenizer.encode("Please keep it short. " * 400, add_special_tokens=False)
    stream = TextStream(tokenizer)
    for i in ids:
        stream.push(i)
    assert stream.shown == stream.text()
    assert tokenizer.decoded < 10 * len(ids)  # decoding everything each time: len(ids)**2 / 2
