"""`python -m app.healthcheck`: is the `wardkey serve` in this container alive? For a container
HEALTHCHECK (deploy/docker/Dockerfile), where no curl is installed: it asks `/healthz` on this
machine and exits 0 when it answers 200, 1 otherwise, saying why on one line.

The URL is WARDKEY_HEALTHCHECK_URL, or http://127.0.0.1:$PORT/healthz (PORT as `serve` reads
it, 3000 by default). It imports nothing of WardKey's, so it costs a few milliseconds.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

TIMEOUT_SECONDS = 4.0


def health_url(env: dict[str, str] | None = None) -> str:
    env = dict(os.environ) if env is None else env
    return env.get("WARDKEY_HEALTHCHECK_URL") or (
        f"http://127.0.0.1:{env.get('PORT') or '3000'}/healthz"
    )


def check(url: str, timeout: float = TIMEOUT_SECONDS) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            status = int(answer.status)
    except urllib.error.HTTPError as exc:
        return False, f"{url} answered {exc.code}"
    except (OSError, ValueError) as exc:
        return False, f"{url} did not answer: {exc}"
    if status != 200:
        return False, f"{url} answered {status}"
    return True, f"{url} answered 200"


def main() -> int:
    healthy, said = check(health_url())
    print(f"wardkey healthcheck: {said}", file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
