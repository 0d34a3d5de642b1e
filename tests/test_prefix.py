"""PATH_PREFIX: every route served under it, the probes at the root too, the prefix itself
redirected, and no path that escapes it; then behind real nginx routing by path, passing the
prefix on to a server that has it, and taking it off for one that has not (X-Forwarded-Prefix
shown in /echo, believed from a trusted proxy only)."""

import json

import pytest

from friendlyhello import settings
from helpers import free_port, refused_env, request, run_to_exit, serving
from test_proxies import end_proxy, exchange, run_proxy


@pytest.mark.parametrize("given, prefix", [("/app", "/app"), ("/app/", "/app"), ("/demo/hello", "/demo/hello"),
                                           ("", ""), ("/", ""), ("/a.b~c-d_e", "/a.b~c-d_e")])
def test_a_prefix_is_a_path_of_plain_segments_its_trailing_slash_dropped(given, prefix):
    assert settings.load_config([], {"PATH_PREFIX": given}).path_prefix == prefix


@pytest.mark.parametrize("given", ["app", "/a/../b", "/a/./b", "/a//b", "/a b", "/caf\u00e9", "/%2e%2e", "/a?b"])
def test_any_other_prefix_is_refused_naming_the_setting(given):
    with pytest.raises(settings.ConfigError, match=r"^PATH_PREFIX="):
        settings.load_config([], {"PATH_PREFIX": given})


def test_a_wrong_prefix_stops_the_server_before_it_binds_with_one_line():
    code, out, err = run_to_exit({"PATH_PREFIX": "/a/../b", "PORT": "0"})
    assert code == 2 and out == "" and err.count("\n") == 1 and "PATH_PREFIX='/a/../b'" in err, err


def status(server, path, **options):
    return request(server.port, path, **options).status


def test_under_a_prefix_every_route_answers_there_the_probes_at_the_root_too_and_nothing_else():
    with serving(refused_env(PATH_PREFIX="/app")) as server:
        page = request(server.port, "/app/")
        under = {path: status(server, path) for path in ("/app/echo", "/app/replicas", "/app/healthz", "/app/readyz",
                                                         "/app/metrics", "/app/status/418", "/app/bytes/5")}
        root = {path: status(server, path) for path in ("/healthz", "/livez", "/readyz", "/metrics")}
        outside = {path: status(server, path) for path in ("/", "/echo", "/replicas", "/status/418", "/application/",
                                                           "/app2/echo", "/appecho")}
        moved = request(server.port, "/app?x=1")
        scraped = request(server.port, "/metrics").text
    assert page.status == 200 and page.text.startswith("<h3>Hello ")
    assert under == {"/app/echo": 200, "/app/replicas": 200, "/app/healthz": 200, "/app/readyz": 200,
                     "/app/metrics": 200, "/app/status/418": 418, "/app/bytes/5": 200}
    assert set(root.values()) == {200} and set(outside.values()) == {404}
    assert (moved.status, moved.headers["Location"]) == (308, "/app/?x=1")
    assert 'route="/echo"' in scraped and 'route="/app/echo"' not in scraped  # labels as the table's


ESCAPES = ["/app/../metrics", "/app/%2e%2e/metrics", "/app%2fecho", "/app/%2e%2e%2fmetrics", "/app/./echo",
           "/app//echo", "/APP/echo", "/app/..%2f..%2fmetrics"]


def test_no_path_escapes_the_prefix():
    with serving(refused_env(PATH_PREFIX="/app")) as server:
        answers = {target: exchange(server.port, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                                                 .encode())[:13] for target in ESCAPES}
    assert answers == dict.fromkeys(ESCAPES, b"HTTP/1.1 404 ")


def test_behind_nginx_the_prefix_passed_on_is_served_and_one_taken_off_is_told_in_echo(tmp_path):
    listen = free_port()
    with serving(refused_env(PATH_PREFIX="/app")) as prefixed, \
            serving(refused_env(TRUSTED_PROXIES="127.0.0.1")) as plain:
        proxy = run_proxy("nginx", "nginx-prefix.conf", tmp_path, [listen], http_port=listen,
                          prefixed_port=prefixed.port, plain_port=plain.port)
        try:
            passed_on = request(listen, "/app/")
            passed_echo = json.loads(request(listen, "/app/echo", headers={"Accept": "application/json"}).body)
            taken_off = request(listen, "/strip/")
            told = json.loads(request(listen, "/strip/echo", headers={"Accept": "application/json"}).body)
        finally:
            end_proxy(proxy)
        forged = exchange(plain.port, b"GET /echo HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n"
                                      b"X-Forwarded-Prefix: /evil\r\nConnection: close\r\n\r\n", source="127.0.0.2")
        forged = json.loads(forged.partition(b"\r\n\r\n")[2])  # from a client, not the proxy
    assert passed_on.status == taken_off.status == 200
    assert passed_on.text.startswith("<h3>Hello ") and taken_off.text.startswith("<h3>Hello ")
    assert passed_echo["request_line"] == "GET /app/echo HTTP/1.0" and passed_echo["x_forwarded_prefix"] is None
    assert told["request_line"] == "GET /echo HTTP/1.0"
    assert told["x_forwarded_prefix"] == {"prefix": "/strip", "from_trusted_proxy": True}
    assert forged["x_forwarded_prefix"] == {"prefix": "/evil", "from_trusted_proxy": False}
