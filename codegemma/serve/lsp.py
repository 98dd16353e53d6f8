"""`codegemma lsp`: a language server (pygls, stdio) that completes code at the cursor.

textDocument/inlineCompletion returns the completion as ghost text; textDocument/completion
returns it as one list item for editors without inline support. Other open documents are the
repository context. A cancelled request ($/cancelRequest) stops its generation between two
tokens, and a newer request supersedes an older one still running (editors send one per burst of
keystrokes and do not always cancel the last).
"""

from __future__ import annotations

import asyncio
import threading
from urllib.parse import unquote, urlparse

from lsprotocol import types
from pygls.lsp.server import LanguageServer

from codegemma.complete.pipeline import Completer, CompletionRequest
from codegemma.errors import CodegemmaError

MAX_CONTEXT_DOCUMENTS = 16


def uri_to_path(uri: str) -> str:
    parsed = urlparse(uri)
    return unquote(parsed.path) if parsed.scheme == "file" else uri


class CompletionServer(LanguageServer):
    def __init__(self, completer: Completer):
        super().__init__("codegemma", "0.1.0")
        self.completer = completer
        self._latest = threading.Event()  # the cancel flag of the newest running request
        self._lock = threading.Lock()

    def supersede(self) -> threading.Event:
        with self._lock:
            self._latest.set()
            self._latest = threading.Event()
            return self._latest

    def request_at(self, uri: str, position: types.Position) -> tuple[CompletionRequest, types.Position]:
        doc = self.workspace.get_text_document(uri)
        text = doc.source
        offset = doc.offset_at_position(position)
        if not 0 <= offset <= len(text):
            raise CodegemmaError(f"{uri}: position {position.line}:{position.character} is outside the document")
        path = uri_to_path(uri)
        context = []
        for other_uri, other in list(self.workspace.text_documents.items())[:MAX_CONTEXT_DOCUMENTS]:
            if other_uri != uri:
                context.append((uri_to_path(other_uri), other.source))
        language = doc.language_id or None
        return CompletionRequest(prefix=text[:offset], suffix=text[offset:], path=path, language=language,
                                 context=context), position

    async def complete_at(self, uri: str, position: types.Position) -> str:
        req, _ = self.request_at(uri, position)
        cancel = self.supersede()
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(None, lambda: self.completer.run(req, cancel=cancel.is_set))
        except asyncio.CancelledError:
            cancel.set()
            raise
        return "" if result.finish_reason == "cancelled" else result.text


def build_server(completer: Completer) -> CompletionServer:
    server = CompletionServer(completer)

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION)
    async def inline_completion(ls: CompletionServer, params: types.InlineCompletionParams):
        text = await ls.complete_at(params.text_document.uri, params.position)
        if not text:
            return types.InlineCompletionList(items=[])
        return types.InlineCompletionList(items=[types.InlineCompletionItem(
            insert_text=text, range=types.Range(start=params.position, end=params.position))])

    @server.feature(types.TEXT_DOCUMENT_COMPLETION,
                    types.CompletionOptions(trigger_characters=[".", "(", " ", "\n"]))
    async def completion(ls: CompletionServer, params: types.CompletionParams):
        text = await ls.complete_at(params.text_document.uri, params.position)
        items = []
        if text:
            label = text.strip().splitlines()[0] if text.strip() else text
            items.append(types.CompletionItem(
                label=label[:80], kind=types.CompletionItemKind.Text, detail=f"codegemma ({completer.profile.name})",
                insert_text_format=types.InsertTextFormat.PlainText,
                text_edit=types.TextEdit(range=types.Range(start=params.position, end=params.position), new_text=text)))
        return types.CompletionList(is_incomplete=True, items=items)

    return server
