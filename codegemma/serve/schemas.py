"""Request bodies of the HTTP API, validated by pydantic; unknown fields are ignored (clients send many).

Three completion dialects share one pipeline:
    OpenAI   POST /v1/completions  {prompt, suffix, max_tokens, temperature, top_p, stop, n, seed, stream}
    Tabby    POST /v1/completions  {language, segments: {prefix, suffix, filepath, declarations, ...}}
    llama.cpp POST /infill         {input_prefix, input_suffix, input_extra, prompt, n_predict, n_indent, ...}

Numbers and booleans are strict, as OpenAI's API is: `"max_tokens": "5"` is refused, not converted.
OpenAI fields this server does not implement (echo, logprobs, best_of > 1) are refused by name
rather than ignored, so a client never mistakes a plain answer for the one it asked for.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator

MAX_NEW_TOKENS = 2048
MAX_STOPS = 8
MAX_CHOICES = 8  # completions per request: n, times the number of prompts
# a seed is a 64-bit integer (torch refuses larger ones, OpenAI documents int64); choice i of a
# request samples with seed + i, which must fit too
MAX_SEED = 2 ** 63 - 1 - MAX_CHOICES
MAX_PREDICT_MS = 24 * 3600 * 1000


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
Bool = Annotated[bool, Strict()]
Temperature = Annotated[float, Strict(), Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Strict(), Field(gt=0.0, le=1.0)]
MaxTokens = Annotated[int, Strict(), Field(ge=0, le=MAX_NEW_TOKENS)]
Seed = Annotated[int, Strict(), Field(ge=0, le=MAX_SEED)]


class StreamOptions(_Request):
    include_usage: Bool = False


class _OpenAI(_Request):
    """Fields the OpenAI completion and chat APIs share."""

    model: str | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    stop: Stop = None
    n: Annotated[int, Strict(), Field(ge=1, le=MAX_CHOICES)] = 1
    seed: Seed | None = None
    stream: Bool = False
    stream_options: StreamOptions | None = None

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


def _refuse(name: str, value: Any, neutral: tuple = (None,)) -> Any:
    # identity, not equality: `logprobs: 0` asks for log-probabilities although 0 == False
    if not any(value is n or (type(value) is type(n) and value == n) for n in neutral):
        raise ValueError(f"{name} is not supported by this server")
    return value


class OpenAICompletion(_OpenAI):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=MAX_CHOICES)] = ""
    suffix: str | None = None
    max_tokens: MaxTokens | None = None
    echo: Any = None
    logprobs: Any = None
    best_of: Any = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _text_prompts(cls, value):
        # checked here, not by the union, whose first complaint would be "not a valid string"
        if isinstance(value, list):
            if not value:
                raise ValueError("the list of prompts is empty")
            if not all(isinstance(p, str) for p in value):
                raise ValueError("prompts must be text (a string or a list of strings); token ids are not supported")
        return value

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value):
        return _refuse("echo", value, (None, False))

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value):
        return _refuse("logprobs", value)

    @field_validator("best_of")
    @classmethod
    def _no_best_of(cls, value):
        return _refuse("best_of", value, (None, 1))

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


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


class OpenAIChat(_OpenAI):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=256)]
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    logprobs: Any = None
    top_logprobs: Any = None

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value):
        return _refuse("logprobs", value, (None, False))

    @field_validator("top_logprobs")
    @classmethod
    def _no_top_logprobs(cls, value):
        return _refuse("top_logprobs", value)


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
    seed: Seed | None = None
    mode: Literal["standard"] = "standard"


class ExtraChunk(_Request):
    filename: str
    text: str


class Infill(_Request):
    input_prefix: str = ""
    input_suffix: str = ""
    input_extra: Annotated[list[ExtraChunk], Field(max_length=64)] = []
    prompt: str = ""
    n_predict: Annotated[int, Strict(), Field(ge=-1, le=MAX_NEW_TOKENS)] = -1
    stop: Annotated[list[str], Field(max_length=MAX_STOPS)] = []
    stream: Bool = False
    t_max_predict_ms: Annotated[int, Strict(), Field(ge=0, le=MAX_PREDICT_MS)] | None = None
    n_indent: Annotated[int, Strict(), Field(ge=0, le=1000)] | None = None
    temperature: Temperature | None = None
    top_k: Annotated[int, Strict(), Field(ge=0, le=1_000_000)] | None = None
    top_p: TopP | None = None
    seed: Seed | None = None
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
    if error.get("type") == "value_error":  # our own validators' words, without pydantic's "Value error, "
        message = str(error.get("ctx", {}).get("error", message))
    return field or "body", message
