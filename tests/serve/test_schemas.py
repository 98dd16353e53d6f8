"""Request validation details that the end-to-end server tests do not pin down."""

import pytest
from pydantic import ValidationError

from codegemma.serve import schemas


def test_chat_content_parts_join_as_gemmas_template_writes_them():
    body = schemas.OpenAIChat.model_validate({"messages": [
        {"role": "user", "content": [{"type": "text", "text": "Sort this list:\n"}, {"type": "text", "text": " [3, 1]"}]},
        {"role": "assistant", "content": "sorted"}]})
    assert [m.text() for m in body.messages] == ["Sort this list:[3, 1]", "sorted"]


@pytest.mark.parametrize("content, message", [
    ([{"type": "image_url", "image_url": {"url": "x"}}], "content part 0 is 'image_url'"),
    ([{"type": "text", "text": "a"}, "b"], "content part 1 is 'str'"),
    ([], "empty list"),
    ([{"type": "text"}], "part 0 has no text"),
])
def test_chat_content_other_than_text_is_refused_by_name(content, message):
    with pytest.raises(ValidationError) as err:
        schemas.OpenAIChat.model_validate({"messages": [{"role": "user", "content": content}]})
    field, text = schemas.describe_error(err.value)
    assert field == "messages.0.content" and message in text
