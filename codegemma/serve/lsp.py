"""`codegemma lsp`: a language server (pygls, stdio) that completes code at the cursor.

textDocument/inlineCompletion returns the completion as ghost text; textDocument/completion
returns it as one list item for editors without inline support. Other open documents are the
repository context. A cancelled request ($/cancelRequest) stops its generation between two
tokens, and a newer request supersedes an older one still running (editors send one per burst of
keystrokes and do not always cancel the last).

Where pygls stays silent or answers with a traceback, the protocol answers as the LSP spec asks:
a request with malformed params gets InvalidParams, one before `initialize` ServerNotInitialized,
one after `shutdown` InvalidRequest; a position past the end of a line or of the document means
that end.
"""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any, Callable
from urllib.parse import unquote, urlparse

import cattrs
from cattrs.errors import ClassValidationError
from lsprotocol import types
from pygls.exceptions import (JsonRpcException, JsonRpcInvalidParams, JsonRpcInvalidRequest,
                              JsonRpcServerNotInitialized)
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.json_rpc import RPCRequest

from codegemma.complete.pipeline import Completer, CompletionRequest

MAX_CONTEXT_DOCUMENTS = 16
LINE_BREAK = re.compile(r"\r\n|\r|\n")  # the only line ends LSP counts (str.splitlines knows more)
_ANSWERED = object()  # a request already answered with an error while it was being read


def uri_to_path(uri: str) -> str:
    parsed = urlparse(uri)
    return unquote(parsed.path) if parsed.scheme == "file" else uri


def resolve_position(text: str, position: types.Position, units: Callable[[str], int]) -> tuple[int, types.Position]:
    """The offset in `text` of a client's position and the position itself, both kept inside the
    document: a character past the end of its line means the end of the line, a line past the last
    the end of the document. `units` counts a string's length in the client's position encoding."""
    breaks = list(LINE_BREAK.finditer(text))
    line = min(position.line, len(breaks))  # one line more than there are line breaks
    start = breaks[line - 1].end() if line else 0
    end = breaks[line].start() if line < len(breaks) else len(text)
    wanted = position.character if line == position.line else float("inf")
    offset, counted = start, 0
    while offset < end and counted < wanted:
        counted += units(text[offset])
        offset += 1
    return offset, types.Position(line=line, character=counted)


def _why(exc: BaseException, type_: Any) -> str:
    return "required field missing" if isinstance(exc, KeyError) else str(exc) or f"not a valid {type_}"


class CompletionProtocol(LanguageServerProtocol):
    """pygls's protocol, answering the requests that pygls would leave without a response."""

    def structure_message(self, data: dict) -> Any:
        try:
            return super().structure_message(data)
        except JsonRpcException as exc:
            if "id" not in data or "method" not in data:
                raise  # not a request: nobody waits for an answer
            message = exc.message
            if isinstance(exc, JsonRpcInvalidParams) and isinstance(exc.__cause__, ClassValidationError):
                problems = cattrs.transform_error(exc.__cause__, format_exception=_why)
                # cattrs names the Python attributes; the client wrote camelCase
                problems = [re.sub(r"_([a-z])", lambda m: m.group(1).upper(), p) for p in problems]
                message = f"invalid params for {data['method']}: " + "; ".join(problems)
            self._send_response(data["id"], error=types.ResponseError(code=exc.code, message=message))
            return _ANSWERED

    def handle_message(self, message: Any):
        if message is _ANSWERED:
            return
        method = getattr(message, "method", None)
        if method is not None and method != types.EXIT:
            error = None
            if self._shutdown:
                error = JsonRpcInvalidRequest(f"{method}: the server is shutting down")
            elif self._workspace is None and method != types.INITIALIZE:  # set by `initialize`
                error = JsonRpcServerNotInitialized(f"{method}: the server is not initialized")
            if error is not None:
                # requests get the error; notifications are dropped, as the spec says
                if isinstance(message, RPCRequest):
                    self._send_response(message.id, error=error.to_response_error())
                return
        super().handle_message(message)


class CompletionServer(LanguageServer):
    def __init__(self, completer: Completer):
        super().__init__("codegemma", "0.1.0", protocol_cls=CompletionProtocol)
        self.completer = completer
        self._latest = threading.Event()  # the cancel flag of the newest running request
        self._lock = threading.Lock()

    def supersede(self) -> threading.Event:
        with self._lock:
            self._latest.set()
            self._latest = threading.Event()
            return self._latest

    def request_at(self, uri: str, position: types.Position) -> tuple[CompletionRequest, types.Position] | None:
        """The completion request at a position of an open document, and the position kept inside
        the document (replies use it); None for a document the client has not opened."""
        key = unquote(uri)  # how pygls keys its open documents
        doc = self.workspace.text_documents.get(key)
        if doc is None:
            return None
        text = doc.source
        offset, position = resolve_position(text, position, doc.position_codec.client_num_units)
        context = []
        for other_key, other in list(self.workspace.text_documents.items())[:MAX_CONTEXT_DOCUMENTS]:
            if other_key != key:
                context.append((uri_to_path(other_key), other.source))
        language = doc.language_id or None
        return CompletionRequest(prefix=text[:offset], suffix=text[offset:], path=uri_to_path(uri), language=language,
                                 context=context), position

    async def complete_at(self, uri: str, position: types.Position) -> tuple[str, types.Position]:
        """The completion text and the position it goes at ("" for a document that is not open)."""
        found = self.request_at(uri, position)
        if found is None:
            return "", position
        req, position = found
        cancel = self.supersede()
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(None, lambda: self.completer.run(req, cancel=cancel.is_set))
        except asyncio.CancelledError:
            cancel.set()
            raise
        return ("" if result.finish_reason == "cancelled" else result.text), position


def build_server(completer: Completer) -> CompletionServer:
    server = CompletionServer(completer)

    # options must be given, or pygls leaves inlineCompletionProvider out of the capabilities
    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(ls: CompletionServer, params: types.InlineCompletionParams):
        text, at = await ls.complete_at(params.text_document.uri, params.position)
        if not text:
            return types.InlineCompletionList(items=[])
        return types.InlineCompletionList(items=[types.InlineCompletionItem(
            insert_text=text, range=types.Range(start=at, end=at))])

    @server.feature(types.TEXT_DOCUMENT_COMPLETION,
                    types.CompletionOptions(trigger_characters=[".", "(", " ", "\n"]))
    async def completion(ls: CompletionServer, params: types.CompletionParams):
        text, at = await ls.complete_at(params.text_document.uri, params.position)
        items = []
        if text:
            label = text.strip().splitlines()[0] if text.strip() else text
            items.append(types.CompletionItem(
                label=label[:80], kind=types.CompletionItemKind.Text, detail=f"codegemma ({completer.profile.name})",
                insert_text_format=types.InsertTextFormat.PlainText,
                text_edit=types.TextEdit(range=types.Range(start=at, end=at), new_text=text)))
        return types.CompletionList(is_incomplete=True, items=items)

    return server
