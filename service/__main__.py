"""`python -m service --model DIR [--host --port]`: serve a model directory with uvicorn."""

import argparse
import os
import signal
import sys
from pathlib import Path

# OpenMP threads that finish their share of a batch sleep instead of spinning: the detector's and the classifier's
# threads share the cores with decoding and the event loop (+8 % photos/s here). Read when torch loads, so first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import uvicorn  # noqa: E402

from service.app import create_app  # noqa: E402
from service.runtime.modeldir import ModelDirError, load_manifest  # noqa: E402
from service.security import KeyFileError  # noqa: E402
from service.server import (  # noqa: E402
    ACCEPT_BACKLOG,
    DrainingServer,
    connection_cap,
    guarded_protocol,
    quiet_flood_logs,
)
from service.settings import Settings  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    parser.add_argument("--model", type=Path, help="model directory (default: FER_MODEL_DIR or models/default)")
    parser.add_argument("--host", help="default: FER_HOST or 0.0.0.0")
    parser.add_argument("--port", type=int, help="default: FER_PORT or 8000")
    args = parser.parse_args(argv)
    overrides = {"model_dir": args.model, "host": args.host, "port": args.port}
    settings = Settings(**{key: value for key, value in overrides.items() if value is not None})
    try:
        load_manifest(settings.model_dir)  # refuse to start on a missing or corrupt model, with the reason
        app = create_app(settings)
    except (ModelDirError, KeyFileError) as error:
        print(f"error: cannot serve {settings.model_dir}: {error}", file=sys.stderr)
        return 2
    protocol = guarded_protocol(settings.header_timeout_s, settings.body_timeout_s,
                                connection_cap(settings.max_connections))
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            http=protocol, backlog=ACCEPT_BACKLOG, timeout_graceful_shutdown=int(settings.graceful_timeout_s))
    quiet_flood_logs()  # after uvicorn's logging set-up
    # uvicorn drains in-flight requests on SIGTERM, then re-raises the signal; by then the stop is a clean one.
    signal.signal(signal.SIGTERM, _exit_after_drain)
    DrainingServer(config, app.state.draining).run()
    return 0


def _exit_after_drain(signum, frame) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    sys.exit(main())
