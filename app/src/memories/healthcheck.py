"""The container healthcheck: exit 0 when `/v1/health` answers 200, 1 otherwise."""

import os
import sys
import urllib.request


def main() -> int:
    url = f"http://127.0.0.1:{os.environ.get('PORT', '8283')}/v1/health"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return 0 if response.status == 200 else 1
    except Exception as err:  # noqa: BLE001 - any failure is "unhealthy".
        print(f"unhealthy: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
