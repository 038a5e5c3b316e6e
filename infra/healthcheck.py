"""Container healthcheck: exit 0 when every URL given answers HTTP 200, else 1.

docker-compose.yml runs it for the Python services (the slim image has no curl)::

    python /opt/mlops/infra/healthcheck.py http://127.0.0.1:4200/api/health

Standard library only, so it starts in a fraction of the time an import of the
platform would take, and a short timeout, so a hung server counts as unhealthy
instead of holding up Docker's check. What failed goes to stderr (``docker inspect``
shows it under ``State.Health``).
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

TIMEOUT_S = 5.0


def check(url: str, timeout_s: float = TIMEOUT_S) -> str | None:
    """None when ``url`` answers 200; otherwise what went wrong."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"{url}: not answering ({reason})"
    return None if status == 200 else f"{url}: HTTP {status}"


def main(argv: list[str]) -> int:
    if not argv:
        sys.stderr.write("usage: healthcheck.py URL [URL ...]\n")
        return 2
    problems = [problem for url in argv if (problem := check(url)) is not None]
    for problem in problems:
        sys.stderr.write(problem + "\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
