"""friendlyhello's machinery, a module per job; ``hello_server`` (beside it) wires and runs it.

Imports run one way, from the leaves up; nothing here imports ``hello_server``, and
``resp_client`` (beside it too) knows nothing of HTTP. tests/test_layout.py keeps it so.

    proxies         what proxies say of the client: PROXY headers, forwarded headers
    tls             the certificate from files, reloaded; each connection's TLS layer
    faults          faults turned on to break it on purpose
    cpus            the CPUs this process may use (WORKERS=auto)
    values          what each setting's text may be: the table's parsers
                        -> cpus, proxies, resp_client
    settings        the settings table, read once into one Config
                        -> faults, proxies, tls, values
    logs            access and event lines that never block serving
    redis_state     how a Redis call ended, in one vocabulary; Redis's state  -> resp_client
    redis_thread    the Redis thread, and the client the settings describe
                        -> redis_state, resp_client
    metrics         what is counted; the Prometheus text format  -> redis_state, tls
    shared_memory   the workers' metrics slots (imported with workers only)
    responses       what a route answers; the bytes of every answer
    routes          the route table's rows; what an answer is given
    lifecycle       what the probes say of the process: stopping, its threads alive
    tracing         each request's id, and the W3C trace it belongs to
    http11          http.server's handler, held to RFC 9112  -> responses, routes, tracing
    connection      one client connection and its states  -> proxies, tls
    websocket       /ws: RFC 6455's frames, and the loop's WebSockets  -> connection, responses
    streams         /bytes/, /stream/, /drip, /sse: bodies made as the client takes them
                        -> connection, responses
    bodies          request bodies read as they come, within limits  -> connection, responses
    replicas        what replicas keep in Redis: the counter, their records  -> resp_client
    replica_view    /replicas: the records read, as a table or JSON
                        -> redis_state, replicas, resp_client
    site            the page, the probes, /metrics, /replicas, /status/ and /delay/
                        -> redis_state, replica_view, resp_client, responses
    echo            /echo: what arrived, and from whom  -> logs, proxies, responses, tls
    network_tools   /dns and /dial (NETWORK_TOOLS=on), asked by threads of their own
                        -> responses
    responder       each answer held, counted, logged and written
                        -> connection, proxies, resp_client, responses, tracing
    server          the selector loop
        -> bodies, connection, http11, responder, responses, resp_client, streams, websocket
    listening       the port, or why not
    healthcheck     the image's HEALTHCHECK
    workers         the supervisor of several worker processes
    admin           the admin port: faults turned on and off at run time
                        -> connection, faults, http11, proxies, tls
    http_client     watch's HTTP/1.1 client: each answer within one deadline
    websocket_client  watch's WebSocket client: RFC 6455 from the client's side
                        -> http_client, websocket
    watch_tally     what watch counts and shows; the schedule its connections share
    watch_websocket  `watch ws://`: WebSockets held, and what ended each
                        -> http_client, responses, watch_tally, websocket, websocket_client
    watch           `hello_server.py watch URL`: a client that counts a rollout
                        -> http_client, responses, watch_tally, watch_websocket
"""

VERSION = "1.0"
SERVER_NAME = f"friendlyhello/{VERSION}"
