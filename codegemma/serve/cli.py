"""`codegemma serve` (HTTP) and `codegemma lsp` (language server on stdio)."""

from __future__ import annotations

import sys
from pathlib import Path

from codegemma.commands import count
from codegemma.complete.cli import prompt_tokens
from codegemma.errors import CodegemmaError


def model_name(spec: str | None) -> str:
    if not spec:
        return "gemma3-270m"
    path = Path(spec)
    return path.stem if path.suffix == ".gguf" else path.name


def cmd_serve(args) -> int:
    import uvicorn

    from codegemma.complete.cli import build_completer
    from codegemma.serve.app import ServerSettings, create_app

    # checked before the model loads: a wrong flag should not cost a load, nor end in a traceback
    if not 0 <= args.port <= 65535:
        raise CodegemmaError(f"--port must be in 0..65535, got {args.port}")
    if not args.request_timeout > 0:  # NaN fails this test too
        raise CodegemmaError(f"--request-timeout must be a positive number of seconds, got {args.request_timeout}")
    completer = build_completer(args)
    settings = ServerSettings(max_queue=args.max_queue, max_batch=args.max_batch,
                              request_timeout_s=args.request_timeout, max_request_bytes=args.max_request_bytes)
    app = create_app(completer, model_name(args.model), settings)
    print(f"codegemma serve: {model_name(args.model)} (profile {completer.profile.name}) on "
          f"http://{args.host}:{args.port}", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def cmd_lsp(args) -> int:
    from codegemma.complete.cli import build_completer
    from codegemma.serve.lsp import build_server

    server = build_server(build_completer(args))
    server.start_io()
    return 0


def _add_model_options(p):
    from codegemma.commands import add_model_args

    add_model_args(p)
    p.add_argument("--profile", default=None, help="override the model profile (e.g. codegemma, gemma3)")
    p.add_argument("--fim-order", choices=["psm", "spm"], default=None, help="default: the profile's (spm)")
    p.add_argument("--max-prompt-tokens", type=prompt_tokens, default=None, help="prompt budget in tokens (default 1536)")


def register(sub):
    p = sub.add_parser("serve", help="HTTP server: OpenAI-compatible, llama.cpp /infill and Tabby-style completion")
    _add_model_options(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--max-queue", type=count, default=32, help="waiting requests before answering 503")
    p.add_argument("--max-batch", type=count, default=8, help="non-streaming requests generated together")
    p.add_argument("--request-timeout", type=float, default=60.0, help="seconds per request, queueing included")
    p.add_argument("--max-request-bytes", type=count, default=2_000_000)
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("lsp", help="language server on stdio: inline and list completions for editors")
    _add_model_options(p)
    p.set_defaults(func=cmd_lsp)
