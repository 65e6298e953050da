"""`python -m gateway.healthcheck`: exit 0 when this container's gateway is ready
(/readyz: Redis answers, the scripts are loaded, the database carries every
migration), 1 otherwise. The image's HEALTHCHECK runs it: the slim base has no
curl, and this reads the same METERING_PORT as the gateway."""

from __future__ import annotations

import sys
import urllib.request

from metering.settings import Settings

TIMEOUT_S = 3.0


def main() -> int:
    settings = Settings.from_env()
    url = f"http://127.0.0.1:{settings.port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
