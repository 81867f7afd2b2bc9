"""`remora` command line: the sidecar server, encode and score from the shell, and a demo."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

# The engine (and torch) are imported only by the commands that run it: `remora webhook` runs in
# a small pod of its own and never loads a model.
if TYPE_CHECKING:
    from remora.core.engine import Engine


def _engine(args: argparse.Namespace) -> Engine:
    from remora.core.engine import Engine
    from remora.sidecar.settings import engine_settings

    engine = Engine(engine_settings())
    if args.model_path:
        engine.register(args.model, args.model_path)
    return engine


def _encode(args: argparse.Namespace) -> int:
    engine = _engine(args)
    vectors = engine.encode(args.model, args.texts, is_query=args.query, truncate=not args.reject_long)
    for vector in vectors:
        print(json.dumps([round(float(x), 7) for x in vector]))
    return 0


def _score(args: argparse.Namespace) -> int:
    engine = _engine(args)
    scores = engine.score(args.model, args.query, args.documents, truncate=not args.reject_long)
    for doc, score in sorted(zip(args.documents, scores, strict=True), key=lambda p: -p[1]):
        print(f"{score:.6f}\t{doc}")
    return 0


DEMO_DOCS = (
    "Remora runs embedders and rerankers as a sidecar next to your vector database.",
    "Tokens are packed without padding, so no compute is spent on pad positions.",
    "The sea otter uses rocks to crack open shellfish.",
    "Qdrant, Chroma, Weaviate and LanceDB can call Remora to vectorize text on write and query.",
)


def _demo(args: argparse.Namespace) -> int:
    engine = _engine(args)
    query = args.query_text
    docs = engine.encode(args.model, list(DEMO_DOCS))
    q = engine.encode(args.model, [query], is_query=True)[0]
    model = engine.model(args.model)
    print(f"model {model.spec.id} ({model.architecture}, {model.dim}-d, attention: {engine.runtime.attention.name})")
    print(f"query: {query}")
    for doc, sim in sorted(zip(DEMO_DOCS, docs @ q, strict=True), key=lambda p: -p[1]):
        print(f"  {sim:+.4f}  {doc}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from remora.sidecar.server import serve
    from remora.sidecar.settings import server_settings

    settings = server_settings(config=args.config)
    return serve(settings, host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log)


def _webhook(args: argparse.Namespace) -> int:
    from remora.sidecar.webhook.config import ConfigError, load_config
    from remora.sidecar.webhook.server import TLSError, serve

    try:
        config = load_config(args.config)
        return serve(config, host=args.host, port=args.port, certfile=args.tls_cert, keyfile=args.tls_key,
                     log_level=args.log_level)
    except (ConfigError, TLSError) as exc:
        print(f"remora webhook: {exc}", file=sys.stderr)
        return 2


def _webhook_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s; 0.0.0.0 in the cluster)")
    p.add_argument("--port", type=int, default=8443)
    p.add_argument("--tls-cert", type=Path, required=True, help="PEM certificate (reloaded when the file changes)")
    p.add_argument("--tls-key", type=Path, required=True, help="PEM private key")
    p.add_argument("--config", type=Path, required=True, help="injection config (YAML): what the sidecar gets")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(run=_webhook)


WEBHOOK_HELP = "run the sidecar-injection admission webhook (HTTPS, POST /mutate)"


def build_parser() -> argparse.ArgumentParser:
    from remora.core.defaults import DEFAULT_MODEL_ID

    parser = argparse.ArgumentParser(prog="remora", description="Small-model inference beside your vector database.")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", default=DEFAULT_MODEL_ID, help="model id (default: %(default)s)")
        p.add_argument("--model-path", help="register this local model directory under --model first")
        p.add_argument("--reject-long", action="store_true", help="fail on over-long input instead of truncating")

    enc = sub.add_parser("encode", help="print one JSON vector per text")
    enc.add_argument("texts", nargs="+")
    enc.add_argument("--query", action="store_true", help="encode as queries (applies the query prompt)")
    model_args(enc)
    enc.set_defaults(run=_encode)

    sco = sub.add_parser("score", help="score documents against a query with a cross-encoder")
    sco.add_argument("query")
    sco.add_argument("documents", nargs="+")
    model_args(sco)
    sco.set_defaults(run=_score)

    srv = sub.add_parser("serve", help="run the HTTP sidecar (native, OpenAI, TEI and rerank APIs)")
    srv.add_argument("--config", type=Path, help="model registry file (YAML); default $REMORA_CONFIG or the embedded model")
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s; 0.0.0.0 in containers)")
    srv.add_argument("--port", type=int, default=8080)
    srv.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    srv.add_argument("--access-log", action="store_true", help="log every request")
    srv.set_defaults(run=_serve)

    demo = sub.add_parser("demo", help="rank a few passages against a query with the default model")
    demo.add_argument("query_text", nargs="?", default="How does Remora avoid wasting compute on padding?")
    model_args(demo)
    demo.set_defaults(run=_demo)

    _webhook_arguments(sub.add_parser("webhook", help=WEBHOOK_HELP))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["webhook"]:
        # Parsed on its own: the full parser imports remora.core (and with it torch) for its defaults.
        hook = argparse.ArgumentParser(prog="remora webhook", description=WEBHOOK_HELP)
        _webhook_arguments(hook)
        return int(_webhook(hook.parse_args(argv[1:])))
    from remora.core.errors import RemoraError

    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except RemoraError as exc:
        print(f"remora: {exc.code}: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
