"""`edgeworks dev` and `edgeworks serve`."""

from __future__ import annotations

import argparse
import os
from typing import Any


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", nargs="?", default=".", help="app directory (holds edgeworks.toml)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8787, help="port to listen on (default 8787)")
    p.add_argument("--state-dir", default=None, help="state directory (default: <dir>/.edgeworks)")
    p.add_argument("--quiet", action="store_true", help="do not print a log line per request")
    p.add_argument("--env", default=os.environ.get("EDGEWORKS_ENV") or None, metavar="NAME",
                   help="apply the manifest's [env.NAME] section (default: $EDGEWORKS_ENV)")
    p.add_argument("--secrets-dir", default=None, metavar="DIR",
                   help="a directory holding one file per secret (default: $EDGEWORKS_SECRETS_DIR)")
    p.add_argument("--metrics-listen", default=None, metavar="HOST:PORT", type=_listen,
                   help="also serve GET /metrics there, without auth, for a scraper on a private network"
                        " (default: [observability] metrics_listen)")


def _listen(value: str) -> str:
    from runtime.observability_config import parse_listen

    try:
        parse_listen(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def register(sub: Any) -> None:
    dev = sub.add_parser("dev", help="serve an app for local development, reloading on change",
                         description="Serve the app in DIR; a changed script is reloaded without dropping requests.")
    _add_common(dev)
    dev.set_defaults(func=lambda a: _run(a, dev=True))
    serve = sub.add_parser("serve", help="serve an app in production mode (no reload, no tracebacks)",
                           description="Serve the app in DIR in production mode.")
    _add_common(serve)
    serve.set_defaults(func=lambda a: _run(a, dev=False))


def _run(args: argparse.Namespace, *, dev: bool) -> int:
    from runtime.server import run

    return run(args.dir, host=args.host, port=args.port, dev=dev, state_dir=args.state_dir, quiet=args.quiet,
               env=args.env, secrets_dir=args.secrets_dir, metrics_listen=args.metrics_listen)
