"""friendlyhello's machinery, a module per job; ``hello_server`` (beside it) wires and runs it.

Imports run one way, from the leaves up; nothing here imports ``hello_server``, and
``resp_client`` (beside it too) knows nothing of HTTP. tests/test_layout.py keeps it so.

    proxies         what proxies say of the client: PROXY headers, X-Forwarded-For, Forwarded
    faults          faults turned on to break it on purpose
    settings        the settings table, read once into one Config        -> resp_client, proxies, faults
    logs            access and event lines that never block serving
    redis_pipeline  the Redis thread, Redis's state, how a call ended    -> resp_client
    metrics         what is counted; the Prometheus text format          -> redis_pipeline
    shared_memory   the workers' metrics slots (imported with workers only)
    responses       what a route answers; the bytes of every answer
    http11          http.server's handler, held to RFC 9112              -> responses
    connection      one client connection and its states                 -> proxies
    replicas        what replicas keep in Redis, and /replicas           -> redis_pipeline
    site            the pages, the probes and /echo                      -> replicas, responses, proxies
    server          the selector loop                                    -> connection, http11
    listening       the port, or why not
    healthcheck     the image's HEALTHCHECK
    workers         the supervisor of several worker processes
    admin           the admin port: faults turned on and off at run time  -> faults, connection, http11, proxies
    http_client     watch's HTTP/1.1 client: each answer within one deadline, bodies dropped
    watch           `hello_server.py watch URL`: a client that counts a rollout  -> responses, http_client
"""

VERSION = "1.0"
SERVER_NAME = f"friendlyhello/{VERSION}"
