"""The container's health check: exit 0 while the worker is ready, 1 otherwise.

Runs in its own short-lived process (``HEALTHCHECK`` in ``deploy/Dockerfile``), outside the
worker's loops; touches only ``GET http://127.0.0.1:$CALLFLOW_PORT/readyz``. Ready means the
app token and the inbound keys are fetched and, in fleet mode, the fleet knows the worker;
from the moment the worker starts stopping (SIGTERM) ``/readyz`` answers 503. Standard library
only: the slim image has no curl.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("CALLFLOW_PORT", "8000").strip() or "8000"
    url = f"http://127.0.0.1:{port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=2.0) as reply:
            return 0 if reply.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"not ready: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
