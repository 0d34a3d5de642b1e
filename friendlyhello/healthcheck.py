"""The image's HEALTHCHECK, for an image without curl: the server asks itself for /healthz."""

import http
import http.client
import http.server
import sys

HEALTHCHECK_TIMEOUT = 2.0    # the image's HEALTHCHECK gives it 3 s


def healthcheck(config):
    """The image's HEALTHCHECK: 0 if this container's server answers /healthz with 200."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(config.bind, config.bind)
    conn = http.client.HTTPConnection(host, config.port, timeout=HEALTHCHECK_TIMEOUT)
    try:
        conn.request("GET", "/healthz")
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        print(f"friendlyhello: unhealthy: {exc}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    if status != 200:  # docker inspect shows this line beside the container's health
        print(f"friendlyhello: unhealthy: /healthz answered {status}", file=sys.stderr)
        return 1
    return 0
