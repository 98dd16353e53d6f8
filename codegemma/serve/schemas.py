"""Request bodies of the HTTP API, validated by pydantic; unknown fields are ignored (clients send many).

Three completion dialects share one pipeline:
    OpenAI   POST /v1/completions  {prompt, suffix, max_tokens, temperature, top_p, stop, n, seed, stream}
    Tabby    POST /v1/completions  {language, segments: {prefix, suffix, filepath, declarations, ...}}
    llama.cpp POST /infill         {input_prefix, input_suffix, input_extra, prompt, n_predict, n_indent, ...}
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_NEW_TOKENS = 2048
MAX_STOPS = 8


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", str_max_length=1_000_000)

    @field_validator("*", mode="after")
    @classmethod
    def _encodable(cls, value):
        # lone surrogates survive JSON decoding but no tokenizer can encode them
        for text in ([value] if isinstance(value, str) else value if isinstance(value, list) else []):
            if isinstance(text, str):
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    raise ValueError("contains a lone surrogate (not valid Unicode text)") from None
        return value


Stop = str | Annotated[list[str], Field(max_length=MAX_STOPS)] | None
Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]


class OpenAICompletion(_Request):
    model: str | None = None
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)] = ""
    suffix: str | None = None
    max_tokens: Annotated[int, Field(ge=0, le=MAX_NEW_TOKENS)] | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    stop: Stop = None
    n: Annotated[int, Field(ge=1, le=8)] = 1
    seed: int | None = None
    stream: bool = False

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "user", "assistant"]
    # OpenAI clients may send the content as a list of parts; only text parts exist for these models
    content: str | Annotated[list[TextPart], Field(min_length=1, max_length=64)]

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_only(cls, value):
        # checked here, not by the union, whose first complaint would be "not a valid string"
        if isinstance(value, list):
            if not value:
                raise ValueError("content is an empty list of parts")
            for i, part in enumerate(value):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                if kind != "text":
                    raise ValueError(f"content part {i} is {kind!r}: only text parts are supported")
                if not isinstance(part.get("text"), str):
                    raise ValueError(f"content part {i} has no text string")
        return value

    def text(self) -> str:
        """The content as one string: text parts each trimmed and joined, as Gemma 3's template does."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text.strip() for part in self.content)


class OpenAIChat(_Request):
    model: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=256)]
    max_tokens: Annotated[int, Field(ge=0, le=MAX_NEW_TOKENS)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=0, le=MAX_NEW_TOKENS)] | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    stop: Stop = None
    seed: int | None = None
    stream: bool = False


class Snippet(_Request):
    filepath: str
    body: str


class Segments(_Request):
    prefix: str
    suffix: str | None = None
    filepath: str | None = None
    git_url: str | None = None
    declarations: Annotated[list[Snippet], Field(max_length=64)] | None = None
    relevant_snippets_from_changed_files: Annotated[list[Snippet], Field(max_length=64)] | None = None
    relevant_snippets_from_recently_opened_files: Annotated[list[Snippet], Field(max_length=64)] | None = None
    clipboard: str | None = None


class TabbyCompletion(_Request):
    language: str | None = None
    segments: Segments
    temperature: Temperature | None = None
    seed: int | None = None
    mode: Literal["standard"] = "standard"


class ExtraChunk(_Request):
    filename: str
    text: str


class Infill(_Request):
    input_prefix: str = ""
    input_suffix: str = ""
    input_extra: Annotated[list[ExtraChunk], Field(max_length=64)] = []
    prompt: str = ""
    n_predict: Annotated[int, Field(ge=-1, le=MAX_NEW_TOKENS)] = -1
    stop: Annotated[list[str], Field(max_length=MAX_STOPS)] = []
    stream: bool = False
    t_max_predict_ms: Annotated[int, Field(ge=0)] | None = None
    n_indent: Annotated[int, Field(ge=0, le=1000)] | None = None
    temperature: Temperature | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    top_p: TopP | None = None
    seed: int | None = None
    filename: str | None = None  # the file being completed (an extension: llama.cpp has no such field)


def stops(value: Stop) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def describe_error(exc: ValidationError) -> tuple[str, str]:
    """(field, message) of the first problem, the field as a dotted path such as `messages.0.role`."""
    error = exc.errors()[0]
    field = ".".join(str(x) for x in error.get("loc", ()) if not str(x).startswith(("function-", "constrained-")))
    # pydantic names union members in the location (e.g. `prompt.str`); keep the request's own names
    field = ".".join(part for part in field.split(".") if part not in ("str", "list[str]", "int", "float"))
    message = error.get("msg", "invalid value")
    return field or "body", message
