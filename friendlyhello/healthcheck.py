"""The image's HEALTHCHECK, for an image without curl: the server asks itself for /healthz
(on TLS_PORT when PORT is off)."""

import http
import http.client
import http.server
import sys

HEALTHCHECK_TIMEOUT = 2.0    # the image's HEALTHCHECK gives it 3 s


def healthcheck(config):
    """The image's HEALTHCHECK: 0 if this container's server answers /healthz with 200."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(config.bind, config.bind)
    if config.port is not None:
        conn = http.client.HTTPConnection(host, config.port, timeout=HEALTHCHECK_TIMEOUT)
    else:  # PORT=off: TLS_PORT
        conn = http.client.HTTPSConnection(host, config.tls_port, timeout=HEALTHCHECK_TIMEOUT,
                                           context=_own_context(config))
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


def _own_context(config):
    """TLS to this container's own server: its certificate is not checked (it is itself, on
    loopback); where a client certificate is required, its own certificate is presented,
    which passes where one CA issued both (as cert-manager and meshes do)."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    if config.tls_client_auth == "require":
        context.load_cert_chain(config.tls_cert, config.tls_key)
    return context
