"""The language server: end to end with headless Neovim as the client, and cancellation in-process."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading
import time

import pytest
from lsprotocol import types
from pygls.io_ import run_async
from pygls.workspace import Workspace

from codegemma.complete.pipeline import Completer, CompletionRequest
from codegemma.profiles import resolve_profile
from codegemma.serve.lsp import build_server

SOURCE = '''import math


def circle_area(radius):
    return math.pi * radius ** 2


def circle_circumference(radius):
    

def main():
    print(circle_area(2))
'''
LINE, COL = 8, 4  # 0-based: the blank indented line in circle_circumference

LUA = r'''
local model, file, out, python = _G.arg_model, _G.arg_file, _G.arg_out, _G.arg_python
local client_id = vim.lsp.start_client({
  name = "codegemma",
  cmd = {python, "-m", "codegemma", "lsp", "--model", model},
  root_dir = vim.fn.fnamemodify(file, ":h"),
})
vim.cmd("edit " .. file)
local bufnr = vim.api.nvim_get_current_buf()
vim.lsp.buf_attach_client(bufnr, client_id)
local ok = vim.wait(120000, function()
  local c = vim.lsp.get_client_by_id(client_id)
  return c ~= nil and c.initialized == true
end, 50)
local result = {initialized = ok}
local position = {line = LINE, character = COL}
local params = {textDocument = {uri = vim.uri_from_bufnr(bufnr)}, position = position}
local responses = vim.lsp.buf_request_sync(bufnr, "textDocument/completion", params, 120000)
for _, r in pairs(responses or {}) do result.completion = r.result; result.completion_error = r.err end
params.context = {triggerKind = 1}
responses = vim.lsp.buf_request_sync(bufnr, "textDocument/inlineCompletion", params, 120000)
for _, r in pairs(responses or {}) do result.inline = r.result; result.inline_error = r.err end
vim.fn.writefile({vim.fn.json_encode(result)}, out)
vim.lsp.stop_client(client_id)
vim.cmd("qa!")
'''


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_completer, fim_tokenizer):
    from codegemma.checkpoints import save_hf

    out = tmp_path_factory.mktemp("lsp") / "tiny-fim"
    save_hf(tiny_completer.engine.model, tiny_completer.engine.model.config, fim_tokenizer, out)
    return out


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvim") is None, reason="needs Neovim (apt-get install neovim)")
def test_neovim_gets_the_completion(tmp_path, model_dir):
    from codegemma.checkpoints import load
    from codegemma.engine import Engine

    source = tmp_path / "geometry.py"
    source.write_text(SOURCE)
    out = tmp_path / "result.json"
    script = tmp_path / "client.lua"
    script.write_text(LUA.replace("LINE", str(LINE)).replace("COL", str(COL)))
    setup = (f"lua _G.arg_model={json.dumps(str(model_dir))}; _G.arg_file={json.dumps(str(source))}; "
             f"_G.arg_out={json.dumps(str(out))}; _G.arg_python={json.dumps(sys.executable)}")
    proc = subprocess.run(["nvim", "--headless", "-u", "NONE", "-i", "NONE", "-c", setup, "-c", f"luafile {script}"],
                          capture_output=True, text=True, timeout=240)
    assert out.exists(), proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["initialized"] and not result.get("completion_error") and not result.get("inline_error")

    # the same request in-process, on the same weights, gives the same text
    loaded = load(str(model_dir))
    completer = Completer(Engine(loaded.model, detokenize=loaded.tokenizer.decode), loaded.tokenizer,
                          resolve_profile(loaded.tokenizer))
    lines = SOURCE.splitlines(keepends=True)
    offset = sum(len(x) for x in lines[:LINE]) + COL
    expected = completer.run(CompletionRequest(prefix=SOURCE[:offset], suffix=SOURCE[offset:], path=str(source),
                                               language="python")).text
    items = result["completion"]["items"]
    inline = result["inline"]["items"]
    if expected:
        assert items[0]["textEdit"]["newText"] == expected
        assert items[0]["textEdit"]["range"]["start"] == {"line": LINE, "character": COL}
        assert inline[0]["insertText"] == expected
    else:
        assert items == [] and inline == []


class PacedEngine:
    def __init__(self, model_engine, pace):
        self.inner, self.pace, self.config = model_engine, pace, model_engine.config
        self.tokens = 0

    def stream(self, prompt_ids, params, result=None, cancel=None, deadline=None):
        for token in self.inner.stream(prompt_ids, params, result, cancel, deadline):
            time.sleep(self.pace)
            self.tokens += 1
            yield token


def _server_with_document(completer):
    server = build_server(completer)
    workspace = Workspace(None)
    workspace.put_text_document(types.TextDocumentItem(uri="file:///w/a.py", language_id="python", version=1,
                                                       text=SOURCE))
    workspace.put_text_document(types.TextDocumentItem(uri="file:///w/util.py", language_id="python", version=1,
                                                       text="def helper():\n    return 1\n"))
    server.protocol._workspace = workspace
    return server


def test_open_documents_are_context_and_cancellation_stops_generation(tiny_completer):
    paced = PacedEngine(tiny_completer.engine, 0.05)
    completer = Completer(paced, tiny_completer.tokenizer, tiny_completer.profile)
    server = _server_with_document(completer)
    req, _ = server.request_at("file:///w/a.py", types.Position(line=LINE, character=COL))
    assert req.context == [("/w/util.py", "def helper():\n    return 1\n")]
    assert req.prefix.endswith("def circle_circumference(radius):\n    ")

    async def scenario():
        task = asyncio.ensure_future(server.complete_at("file:///w/a.py", types.Position(line=LINE, character=COL)))
        await asyncio.sleep(0.4)
        task.cancel()  # what pygls does on $/cancelRequest
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.3)
        return paced.tokens

    before = asyncio.run(scenario())
    time.sleep(0.3)
    assert paced.tokens == before < 100  # no token generated after the cancel took effect


def talk(server, *messages: dict) -> tuple[dict, list]:
    """Sends JSON-RPC messages through pygls's own stdio loop, as an editor would; returns the
    responses by id, and the notifications the server sent."""
    sent = []

    class Writer:
        def write(self, data: bytes):
            sent.append(json.loads(data))

        def close(self):
            pass

    server.protocol.set_writer(Writer(), include_headers=False)

    async def run():
        reader = asyncio.StreamReader()
        for message in messages:
            body = json.dumps({"jsonrpc": "2.0", **message}).encode()
            reader.feed_data(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        reader.feed_eof()
        await run_async(threading.Event(), reader, server.protocol, error_handler=server.report_server_error)
        wanted = {m["id"] for m in messages if "id" in m}
        deadline = time.monotonic() + 60
        while not wanted <= {m.get("id") for m in sent if "method" not in m} and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # async handlers answer after the loop has read everything

    asyncio.run(run())
    return {m["id"]: m for m in sent if "method" not in m}, [m for m in sent if "method" in m]


INITIALIZE = {"id": 0, "method": "initialize", "params": {"processId": None, "rootUri": None, "capabilities": {}}}


def did_open(uri: str, text: str) -> dict:
    return {"method": "textDocument/didOpen",
            "params": {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": text}}}


def completion(id: int, uri: str, line: int, character: int) -> dict:
    return {"id": id, "method": "textDocument/completion",
            "params": {"textDocument": {"uri": uri}, "position": {"line": line, "character": character}}}


def test_initialize_advertises_both_kinds_of_completion(tiny_completer):
    responses, _ = talk(build_server(tiny_completer), INITIALIZE)
    capabilities = responses[0]["result"]["capabilities"]
    assert "inlineCompletionProvider" in capabilities and "completionProvider" in capabilities


def test_positions_past_the_end_mean_the_end(tiny_completer, scripted_completer):
    server = _server_with_document(tiny_completer)
    asked = types.Position(line=LINE - 1, character=999)
    req, at = server.request_at("file:///w/a.py", asked)
    line = SOURCE.splitlines()[LINE - 1]
    assert req.prefix.endswith(line) and req.suffix.startswith("\n") and at == types.Position(LINE - 1, len(line))
    assert asked.character == 999  # the client's params are left as they came
    req, at = server.request_at("file:///w/a.py", types.Position(line=999, character=3))
    assert req.prefix == SOURCE and at == types.Position(line=SOURCE.count("\n"), character=0)
    # positions count UTF-16 code units by default: the emoji is two of them
    server.workspace.put_text_document(types.TextDocumentItem(uri="file:///w/b.py", language_id="python", version=1,
                                                              text="s = '\N{GRINNING FACE}'"))
    req, at = server.request_at("file:///w/b.py", types.Position(line=0, character=99))
    assert req.prefix == "s = '\N{GRINNING FACE}'" and at.character == 8

    # a reply's range lies inside the document, where the completion was inserted
    responses, _ = talk(build_server(scripted_completer), INITIALIZE, did_open("file:///w/c.py", "a = 1\nb = "),
                        completion(1, "file:///w/c.py", 7, 0))
    item = responses[1]["result"]["items"][0]
    assert item["textEdit"]["range"]["start"] == item["textEdit"]["range"]["end"] == {"line": 1, "character": 4}


def test_requests_with_bad_params_get_invalid_params(tiny_completer):
    bad_position = completion(2, "file:///w/a.py", -1, 0)
    responses, notes = talk(build_server(tiny_completer), INITIALIZE,
                            {"id": 1, "method": "textDocument/completion", "params": {"bogus": 1}}, bad_position)
    assert responses[1]["error"]["code"] == responses[2]["error"]["code"] == -32602
    assert "textDocument" in responses[1]["error"]["message"] and "line" in responses[2]["error"]["message"]
    assert not [n for n in notes if n["method"] == "window/showMessage"]  # answered, not shown as a server fault


def test_requests_before_initialize_and_after_shutdown(tiny_completer):
    responses, _ = talk(build_server(tiny_completer), completion(1, "file:///w/a.py", 0, 0))
    assert responses[1]["error"]["code"] == -32002 and not responses[1]["error"].get("data")
    responses, _ = talk(build_server(tiny_completer), INITIALIZE, {"id": 1, "method": "shutdown"},
                        completion(2, "file:///w/a.py", 0, 0))
    assert responses[1]["result"] is None and responses[2]["error"]["code"] == -32600


def test_completion_in_a_document_that_is_not_open_is_empty(tiny_completer):
    responses, _ = talk(build_server(tiny_completer), INITIALIZE, completion(1, "file:///nowhere/x.py", 0, 0))
    assert responses[1]["result"]["items"] == [] and "error" not in responses[1]
