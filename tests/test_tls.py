"""TLS on its own port, in process and as a process, with Python's ssl as the client (curl,
openssl s_client, HAProxy, nginx and Chromium are in test_tls_clients.py): every route alike
over TLS, the versions and ALPN offered, what /echo says TLS carried, client certificates,
HTTP sent in clear, handshakes that stall or are garbage, a PROXY header before the handshake,
records decrypted at once, settings refused before binding, rotation, the admin port, metrics.
"""

import calendar
import datetime
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time

import pytest

from certificates import certificates
from friendlyhello.settings import ConfigError, load_config
from friendlyhello.tls import TLSFiles, TLSSetupError, certificate_not_after, distinguished_name, forwarded_client_cert
from helpers import (
    Process,
    metric_sample,
    raw_exchange,
    refused_env,
    run_to_exit,
    serving,
    wait_until,
    without_id,
)
from test_proxies import v2


@pytest.fixture(scope="module")
def certs():
    return certificates()


def tls_env(certs, name="rsa", **extra):
    return refused_env(**{"TLS_PORT": "0", "TLS_CERT": certs.pem(name), "TLS_KEY": certs.key(name), **extra})


def client_context(certs, cert=None, alpn=("http/1.1",), minimum=None, maximum=None):
    context = ssl.create_default_context(cafile=certs.ca)
    if cert:
        context.load_cert_chain(certs.pem(cert), certs.key(cert))
    if alpn:
        context.set_alpn_protocols(list(alpn))
    if minimum:
        context.minimum_version = minimum
    if maximum:
        context.maximum_version = maximum
    return context


def connect(port, context, server_name="localhost", session=None, timeout=5):
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return context.wrap_socket(sock, server_hostname=server_name, session=session)


def https(port, path="/", context=None, headers=None, method="GET", tls=None):
    """One request on a new TLS connection (or on ``tls``, kept open); (status, headers, body)."""
    own = tls is None
    tls = tls or connect(port, context)
    try:
        fields = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        tls.sendall(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n{fields}\r\n".encode())
        response = http.client.HTTPResponse(tls, method=method)
        response.begin()
        return response.status, response.headers, response.read()
    finally:
        if own:
            tls.close()


def echoed(port, context, **options):
    status, _, body = https(port, "/echo", context, headers={"Accept": "application/json"}, **options)
    assert status == 200
    return json.loads(body)


def test_every_route_answers_alike_over_tls_and_in_plain_http(certs):
    context = client_context(certs)
    with serving(tls_env(certs, REPLICA_ID="r1")) as server:
        for path in ("/", "/healthz", "/livez", "/readyz", "/status/418", "/status/204", "/delay/0.05",
                     "/nothing", "/replicas"):
            plain = server.get(path)
            status, headers, body = https(server.tls_port, path, context)
            assert (status, body) == (plain.status, plain.body), path
            assert headers["Friendlyhello-Replica"] == "r1" and headers["Cache-Control"] == "no-store"
        status, _, _ = https(server.tls_port, "/", context, method="POST")
        assert status == 405
        lines = [line for line in server.log_lines() if '"GET /status/418" 418' in line]
    lines = [without_id(line) for line in lines]
    assert [line.rsplit(" ", 1)[1] for line in lines] == [lines[0].rsplit(" ", 1)[1], "TLSv1.3"]  # the access log
    assert lines[0].endswith("ms")


def test_tls_1_2_and_1_3_are_served_and_alpn_offers_http_1_1_and_never_h2(certs):
    with serving(tls_env(certs)) as server:
        seen = {version: echoed(server.tls_port, client_context(certs, minimum=version, maximum=version))["tls"]
                for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)}
        with connect(server.tls_port, client_context(certs, alpn=("h2",))) as only_h2:
            offered_h2 = only_h2.selected_alpn_protocol()
            status, _, _ = https(server.tls_port, "/healthz", tls=only_h2)
        both = connect(server.tls_port, client_context(certs, alpn=("h2", "http/1.1")))
        chosen = both.selected_alpn_protocol()
        both.close()
    assert seen[ssl.TLSVersion.TLSv1_2]["version"] == "TLSv1.2"
    assert seen[ssl.TLSVersion.TLSv1_2]["cipher"].startswith("ECDHE-RSA-AES128-GCM")  # intermediate's first
    assert seen[ssl.TLSVersion.TLSv1_3]["version"] == "TLSv1.3"
    assert (offered_h2, status, chosen) == (None, 200, "http/1.1")


def test_echo_says_what_tls_carried_and_a_resumed_session_says_so(certs):
    context = client_context(certs)
    with serving(tls_env(certs, "ecdsa")) as server:
        first = connect(server.tls_port, context, server_name="hello.test")
        seen = echoed(server.tls_port, context, tls=first)
        https(server.tls_port, "/healthz", tls=first)  # the session ticket comes after the handshake
        session = first.session
        first.close()
        again = connect(server.tls_port, context, server_name="hello.test", session=session)
        resumed = echoed(server.tls_port, context, tls=again)["tls"]
        again.close()
        plain = json.loads(server.get("/echo", headers={"Accept": "application/json"}).body)
    assert seen["tls"] == {"version": "TLSv1.3", "cipher": seen["tls"]["cipher"], "sni": "hello.test",
                           "alpn": "http/1.1", "resumed": False, "client_certificate": None}
    assert seen["tls"]["cipher"].startswith("TLS_")
    assert resumed["resumed"] is True and resumed["sni"] == "hello.test"
    assert plain["tls"] is None


def test_a_client_certificate_is_checked_and_shown_when_optional_and_required_when_require(certs):
    with serving(tls_env(certs, TLS_CLIENT_CA=certs.ca, TLS_CLIENT_AUTH="optional")) as server:
        shown = echoed(server.tls_port, client_context(certs, cert="client"))["tls"]["client_certificate"]
        without = echoed(server.tls_port, client_context(certs))["tls"]["client_certificate"]
        text = https(server.tls_port, "/echo", client_context(certs, cert="client"))[2].decode()
    with serving(tls_env(certs, TLS_CLIENT_CA=certs.ca, TLS_CLIENT_AUTH="require")) as server:
        refused = []
        for cert in (None, "stranger"):  # none, and one from a CA that is not TLS_CLIENT_CA
            with pytest.raises((ssl.SSLError, ConnectionError)):
                https(server.tls_port, "/", client_context(certs, cert=cert))
            refused.append(cert)
        served = https(server.tls_port, "/healthz", client_context(certs, cert="client"))[0]
        counted = metric_sample(server.get("/metrics").text,
                                'friendlyhello_tls_handshakes_total{outcome="client_certificate_refused"}')
    with open(certs.pem("client")) as file:
        der = ssl.PEM_cert_to_DER_cert(file.read())
    assert shown == {"subject": "O=friendlyhello tests,CN=test client", "issuer": "CN=friendlyhello test CA",
                     "sans": ["DNS:client.test", "URI:spiffe://test/client"], "serial": "1003",
                     "not_after": shown["not_after"], "sha256": hashlib.sha256(der).hexdigest()}
    assert shown["not_after"].endswith(" GMT")
    assert without is None
    assert "client certificate O=friendlyhello tests,CN=test client from CN=friendlyhello test CA" in text
    assert served == 200 and counted == 2


def test_plain_http_sent_to_the_tls_port_is_told_so_in_plain_http_then_closed(certs):
    with serving(tls_env(certs)) as server:
        answer = raw_exchange(server.tls_port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        garbage = raw_exchange(server.tls_port, b"\x00\x01\x02\x03 not a handshake\r\n\r\n")
        metrics = server.get("/metrics").text
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"\r\nConnection: close\r\n" in answer
    assert answer.endswith(b"this port speaks HTTPS; the request was sent in plain HTTP (use https://)\n")
    assert garbage == b""
    assert metric_sample(metrics, 'friendlyhello_tls_handshakes_total{outcome="plain_http"}') == 1
    assert metric_sample(metrics, 'friendlyhello_tls_handshakes_total{outcome="protocol_error"}') == 1


def client_hello(certs, server_name="localhost"):
    """The first flight of a real client: its ClientHello's bytes."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context(certs).wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@pytest.mark.slow
def test_a_handshake_that_stalls_or_is_garbage_holds_one_connection_and_delays_nobody(certs):
    hello = client_hello(certs)
    context = client_context(certs)
    with serving(tls_env(certs, IDLE_TIMEOUT="1")) as server:
        stalled = [socket.create_connection(("127.0.0.1", server.tls_port)) for _ in range(3)]
        stalled[0].sendall(hello[:5])                    # a record header, then nothing
        stalled[1].sendall(hello[:len(hello) // 2])      # half a ClientHello
        garbage = socket.create_connection(("127.0.0.1", server.tls_port))
        garbage.sendall(b"\x16\x03\x01\x00\x05" + os.urandom(64))  # a handshake record of noise
        midway = socket.create_connection(("127.0.0.1", server.tls_port), timeout=3)
        midway.sendall(hello)  # a real ClientHello, the server's answer, then noise as its Finished
        flight = midway.recv(65536)
        midway.sendall(b"\x17\x03\x03\x00\x40" + os.urandom(64))
        started = time.monotonic()
        served = [https(server.tls_port, "/healthz", context)[0] for _ in range(20)]
        took = time.monotonic() - started
        garbage.settimeout(2)
        alert = garbage.recv(100)
        midway_end = b"".join(iter(lambda: midway.recv(65536), b""))
        for sock in stalled:
            sock.settimeout(3)
            assert sock.recv(100) == b""  # closed at IDLE_TIMEOUT
        closed_after = time.monotonic() - started
        metrics = server.get("/metrics").text
    for sock in [*stalled, garbage, midway]:
        sock.close()
    assert served == [200] * 20 and took < 1
    assert alert[:1] == b"\x15"  # a TLS alert says what went wrong, then the connection closes
    assert flight[:1] == b"\x16" and midway_end[:1] in (b"\x15", b"\x17")  # an alert (encrypted, in 1.3)
    assert 0.9 < closed_after < 2.5
    assert metric_sample(metrics, 'friendlyhello_tls_handshakes_total{outcome="timeout"}') == 3
    assert metric_sample(metrics, 'friendlyhello_tls_handshakes_total{outcome="protocol_error"}') == 2


def test_records_already_received_are_served_at_once_not_when_the_socket_turns_readable(certs):
    """Three requests in three TLS records, in one TCP write: the first recv holds all three,
    and all are answered, though no more bytes come."""
    with serving(tls_env(certs)) as server:
        sock = socket.create_connection(("127.0.0.1", server.tls_port), timeout=5)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = client_context(certs).wrap_bio(incoming, outgoing, server_hostname="localhost")
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        sock.sendall(outgoing.read())
        records = b""
        for n in range(3):
            tls.write(f"GET /status/{200 + n} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            records += outgoing.read()
        sock.sendall(records)
        answers = b""
        deadline = time.monotonic() + 3
        while answers.count(b"HTTP/1.1 ") < 3 and time.monotonic() < deadline:
            incoming.write(sock.recv(65536))
            try:
                while chunk := tls.read(65536):  # every record received (the client's side of it)
                    answers += chunk
            except ssl.SSLWantReadError:
                pass
        sock.close()
    assert re.findall(rb"HTTP/1.1 (\d+)", answers) == [b"200", b"201", b"202"]


def test_a_proxy_header_comes_before_the_handshake_as_haproxy_sends_it(certs):
    env = tls_env(certs, TRUSTED_PROXIES="127.0.0.1", PROXY_PROTOCOL="v2")
    with serving(env) as server:
        sock = socket.create_connection(("127.0.0.1", server.tls_port), timeout=5)
        sock.sendall(v2(family=0x21, source="2001:db8::9", sport=4242, destination="::1", dport=443))
        tls = client_context(certs).wrap_socket(sock, server_hostname="localhost")
        seen = echoed(server.tls_port, None, tls=tls)
        tls.close()
        without = socket.create_connection(("127.0.0.1", server.tls_port), timeout=5)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            client_context(certs).wrap_socket(without, server_hostname="localhost").sendall(b"GET / HTTP/1.1\r\n\r\n")
        without.close()
    assert seen["client"] == "2001:db8::9" and seen["proxy_protocol"]["source"] == ["2001:db8::9", 4242]
    assert seen["tls"]["version"] == "TLSv1.3"


def key_bytes(certs, name):
    with open(certs.key(name)) as file:
        return [line for line in file.read().splitlines() if not line.startswith("-----")]


BAD_TLS_SETTINGS = [
    ("no such file", {"TLS_CERT": "/nonexistent/cert.pem"}, "TLS_CERT=/nonexistent/cert.pem: cannot read it: "
                                                             "No such file or directory"),
    ("a key for a certificate", {"TLS_CERT": "KEY:rsa"}, "holds no PEM certificate"),
    ("not PEM", {"TLS_KEY": "/etc/hostname"}, "TLS_KEY=/etc/hostname: not a PEM file"),
    ("another certificate's key", {"TLS_KEY": "KEY:ecdsa"}, "is not the key of TLS_CERT="),
    ("a passphrase", {"TLS_KEY": "encrypted.key"}, "the key is protected by a passphrase"),
    ("a CA file that is no CA", {"TLS_CLIENT_CA": "/etc/hostname", "TLS_CLIENT_AUTH": "optional"},
     "TLS_CLIENT_CA=/etc/hostname: not a PEM file"),
    ("TLS_PORT alone", {"TLS_CERT": None, "TLS_KEY": None}, "TLS_PORT needs TLS_CERT and TLS_KEY"),
    ("require without a CA", {"TLS_CLIENT_AUTH": "require"}, "TLS_CLIENT_AUTH=require needs TLS_CLIENT_CA"),
    ("PORT off without TLS", {"TLS_PORT": None, "TLS_CERT": None, "TLS_KEY": None, "PORT": "off"},
     "PORT=off needs TLS_PORT"),
]


def bad_env(certs, settings):
    env = {**tls_env(certs), "TLS_KEY": certs.key("rsa")}
    for name, value in settings.items():
        if value is None:
            env.pop(name)
        elif value.startswith("KEY:"):
            env[name] = certs.key(value[4:])
        elif "/" not in value and name != "TLS_CLIENT_AUTH" and name != "PORT":
            env[name] = certs.path(value)
        else:
            env[name] = value
    return env


@pytest.mark.parametrize("case, settings, words", BAD_TLS_SETTINGS)
def test_what_cannot_work_is_refused_with_one_line_naming_the_setting_and_no_byte_of_the_key(certs, case,
                                                                                            settings, words):
    env = bad_env(certs, settings)
    try:
        config = load_config([], env)
        TLSFiles(config)  # as main does, before anything binds
    except (ConfigError, TLSSetupError) as exc:
        said = str(exc)
    else:
        raise AssertionError(f"{case}: accepted")
    assert words in said and "\n" not in said, said
    assert "KEY-----" not in said
    assert not any(line in said for line in key_bytes(certs, "rsa") + key_bytes(certs, "ecdsa"))


@pytest.mark.slow  # the same, end to end: a process that exits 2
@pytest.mark.parametrize("case, settings, words", [BAD_TLS_SETTINGS[3], BAD_TLS_SETTINGS[6]])
def test_a_tls_setting_that_cannot_work_stops_it_before_it_binds_with_one_line_and_no_key(certs, case, settings,
                                                                                          words):
    env = bad_env(certs, settings)
    code, out, err = run_to_exit(env)
    assert (code, out) == (2, ""), case
    assert err.count("\n") == 1 and err.startswith("friendlyhello: ") and words in err, err
    assert "KEY-----" not in err
    assert not any(line in err for line in key_bytes(certs, "rsa") + key_bytes(certs, "ecdsa"))


@pytest.mark.slow
def test_an_expired_certificate_is_served_with_a_warning_and_its_lapse_is_a_metric(certs):
    proc = Process({**tls_env(certs, "expired"), "BIND": "127.0.0.1", "PORT": "0"})
    try:
        proc.wait_listening()
        context = client_context(certs)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # as curl -k
        metrics = https(proc.tls_port, "/metrics", context)[2].decode()
    finally:
        proc.signal()
        proc.wait(10)
        _, err = proc.finish()
    assert "the certificate has expired: " in err and "not after 2020-02-01 00:00:00 UTC (EXPIRED)" in err
    assert metric_sample(metrics, "friendlyhello_tls_certificate_not_after_seconds") == 1580515200


def serial_served(port, certs):
    context = client_context(certs)
    with connect(port, context) as tls:
        return tls.getpeercert()["serialNumber"]


@pytest.mark.slow
def test_rotated_files_are_served_to_new_connections_within_5s_and_open_ones_keep_theirs(certs, tmp_path):
    """As a Kubernetes Secret volume swaps them: ..data is a link to a folder of the pair, and
    the files are links through it; a new folder, then the link swapped."""
    def release(name, number):
        folder = tmp_path / f"..v{number}"
        folder.mkdir()
        shutil.copy(certs.pem(name), folder / "tls.crt")
        shutil.copy(certs.key(name), folder / "tls.key")
        os.symlink(folder.name, tmp_path / "..data_tmp")
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")

    release("rsa", 1)
    for name in ("tls.crt", "tls.key"):
        os.symlink(f"..data/{name}", tmp_path / name)
    env = tls_env(certs, TLS_CERT=str(tmp_path / "tls.crt"), TLS_KEY=str(tmp_path / "tls.key"))
    with serving(env) as server:
        before = serial_served(server.tls_port, certs)
        kept = connect(server.tls_port, client_context(certs))
        release("rsa2", 2)
        started = time.monotonic()
        after = wait_until(lambda: serial_served(server.tls_port, certs), 5, "the new certificate served",
                           pace=0.1, accept=lambda serial: serial != before)
        took = time.monotonic() - started
        still = https(server.tls_port, "/healthz", tls=kept)[0]
        kept_serial = kept.getpeercert()["serialNumber"]
        kept.close()
        errors = server.error_lines()
    print(f"\nrotation: the new certificate served {took:.2f}s after the link swapped")
    assert after != before and still == 200 and kept_serial == before
    assert any("certificate reloaded (the files changed)" in line for line in errors)


@pytest.mark.slow
def test_a_pair_that_does_not_load_is_logged_and_the_old_one_served_and_sighup_reloads_at_once(certs, tmp_path):
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(certs.pem("rsa"), cert)
    shutil.copy(certs.key("rsa"), key)
    proc = Process({**tls_env(certs, TLS_CERT=str(cert), TLS_KEY=str(key)), "BIND": "127.0.0.1", "PORT": "0"})
    try:
        proc.wait_listening()
        before = serial_served(proc.tls_port, certs)
        shutil.copy(certs.pem("rsa2"), cert)  # a new certificate, its key not yet written: a mismatch
        proc.wait_for_error("not reloaded")  # it looked, and kept the old pair
        during = serial_served(proc.tls_port, certs)
        half = certs.key("rsa2")
        with open(half) as file, open(key, "w") as out:
            out.write(file.read()[:200])  # half written
        proc.wait_for_error("not reloaded")
        still = serial_served(proc.tls_port, certs)
        shutil.copy(certs.key("rsa2"), key)
        os.utime(key, ns=(os.stat(cert).st_mtime_ns,) * 2)
        proc.signal(signal.SIGHUP)
        after = wait_until(lambda: serial_served(proc.tls_port, certs), 1, "SIGHUP's reload", pace=0.02,
                           accept=lambda serial: serial != before)
        alive = proc.process.poll() is None
    finally:
        proc.signal()
        proc.wait(10)
        _, err = proc.finish()
    assert before == during == still != after and alive
    assert err.count("not reloaded") >= 2 and "is not the key of TLS_CERT=" in err
    assert "certificate reloaded (on SIGHUP)" in err
    assert "KEY-----" not in err


@pytest.mark.slow
def test_no_request_fails_through_rotations_under_steady_load(certs, tmp_path):
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"

    def install(name):  # each file replaced whole (written aside, then renamed), cert then key
        for source, target in ((certs.pem(name), cert), (certs.key(name), key)):
            shutil.copy(source, str(target) + ".new")
            os.replace(str(target) + ".new", target)

    install("rsa")
    results, stop = [], threading.Event()
    with serving(tls_env(certs, TLS_CERT=str(cert), TLS_KEY=str(key))) as server:
        context = client_context(certs)

        def load():
            while not stop.is_set():
                try:
                    results.append(https(server.tls_port, "/healthz", context)[0])
                except (OSError, http.client.HTTPException) as exc:
                    results.append(repr(exc))

        threads = [threading.Thread(target=load) for _ in range(3)]
        for thread in threads:
            thread.start()
        def reloaded():
            return sum("certificate reloaded" in line for line in server.error_lines())

        for n in range(4):  # each pair served to some requests, then the next installed
            served = len(results)
            wait_until(lambda served=served: len(results) > served + 50, 10, "requests on this pair", pace=0.01)
            install("rsa2" if n % 2 == 0 else "rsa")
            wait_until(lambda n=n: reloaded() > n, 10, f"reload {n + 1}", pace=0.02)
        served = len(results)
        wait_until(lambda: len(results) > served + 50, 10, "requests on the last pair", pace=0.01)
        stop.set()
        for thread in threads:
            thread.join(10)
        reloads = sum("certificate reloaded" in line for line in server.error_lines())
    failed = [r for r in results if r != 200]
    print(f"\n{len(results)} requests through {reloads} reloads, {len(failed)} failed")
    assert results and failed == [] and reloads >= 3


@pytest.mark.slow
def test_the_admin_port_speaks_https_alone_when_tls_is_on(certs):
    env = {**tls_env(certs), "ADMIN_PORT": "0", "ADMIN_TOKEN": "t" * 32, "BIND": "127.0.0.1", "PORT": "0"}
    proc = Process(env)
    try:
        line = proc.wait_listening()
        port = int(re.search(r"admin port (\d+)", line).group(1))
        context = client_context(certs)
        status, _, body = https(port, "/faults", context, headers={"Authorization": "Bearer " + "t" * 32})
        refused = https(port, "/faults", context)[0]
        plain = raw_exchange(port, b"GET /faults HTTP/1.1\r\nAuthorization: Bearer " + b"t" * 32 + b"\r\n\r\n")
    finally:
        proc.signal()
        proc.wait(10)
        proc.finish()
    assert status == 200 and json.loads(body)["hang"] == "off" and refused == 401
    assert plain.startswith(b"HTTP/1.1 400 ") and b"this port speaks HTTPS" in plain and b'"hang"' not in plain


@pytest.mark.slow
def test_with_port_off_tls_alone_is_served_and_the_healthcheck_checks_it(certs):
    env = {**tls_env(certs), "PORT": "off", "BIND": "127.0.0.1", "TLS_PORT": str(free_tls_port())}
    proc = Process(env)
    try:
        line = proc.wait_listening()
        code, _, err = run_to_exit({**env, "PORT": "off"}, args=("--healthcheck",))
    finally:
        proc.signal()
        proc.wait(10)
        proc.finish()
    assert "listening on https://127.0.0.1:" in line and " and " not in line.split("(")[0]
    assert code == 0, err


def free_tls_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_workers_serve_tls_and_sighup_reaches_every_worker(certs, tmp_path):
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(certs.pem("rsa"), cert)
    shutil.copy(certs.key("rsa"), key)
    env = {**tls_env(certs, TLS_CERT=str(cert), TLS_KEY=str(key)), "WORKERS": "2", "BIND": "127.0.0.1",
           "PORT": "0"}
    proc = Process(env)
    try:
        proc.wait_listening()
        before = {serial_served(proc.tls_port, certs) for _ in range(10)}
        shutil.copy(certs.pem("rsa2"), cert)
        shutil.copy(certs.key("rsa2"), key)
        proc.signal(signal.SIGHUP)
        for _ in range(2):  # each worker says it reloaded
            proc.wait_for_error("certificate reloaded (on SIGHUP)")
        after = {serial_served(proc.tls_port, certs) for _ in range(20)}  # new connections spread over both
    finally:
        proc.signal()
        proc.wait(10)
        _, err = proc.finish()
    assert len(before) == 1 and len(after) == 1 and before != after
    assert err.count("certificate reloaded (on SIGHUP)") == 2  # each worker (the supervisor serves no TLS here)


def test_x_forwarded_client_cert_is_what_a_trusted_proxy_says_and_read_from_no_one_else():
    value = ('By=spiffe://cluster/web;Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688;'
             'Subject="CN=client,O=Acme\\, Inc.";URI=spiffe://cluster/client;DNS=client.test;DNS=c2.test,'
             'By=spiffe://cluster/mesh;Hash=abc')
    headers = {"Accept": "application/json", "X-Forwarded-Client-Cert": value}
    with serving(refused_env(TRUSTED_PROXIES="127.0.0.1")) as server:
        trusted = json.loads(server.get("/echo", headers=headers).body)["forwarded_client_cert"]
    with serving(refused_env(TRUSTED_PROXIES="10.0.0.0/8")) as server:
        stranger = json.loads(server.get("/echo", headers=headers).body)["forwarded_client_cert"]
        text = server.get("/echo", headers={"X-Forwarded-Client-Cert": value}).text
    assert trusted == {"from_trusted_proxy": True, "elements": [
        {"by": "spiffe://cluster/web", "hash": "468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688",
         "subject": "CN=client,O=Acme, Inc.", "uri": "spiffe://cluster/client", "dns": ["client.test", "c2.test"]},
        {"by": "spiffe://cluster/mesh", "hash": "abc"}]}
    assert stranger == {"from_trusted_proxy": False, "elements": None}
    assert "x-forwarded-client-cert: not read: the peer is not a trusted proxy\n" in text


def test_tls_metrics_count_handshakes_and_connections_open_and_give_the_certificate_s_lapse(certs):
    with open(certs.pem("rsa"), "rb") as file:
        lapse = certificate_not_after(file.read(), "TLS_CERT", "rsa.pem")
    with serving(tls_env(certs)) as server:
        held = [connect(server.tls_port, client_context(certs)) for _ in range(3)]
        https(server.tls_port, "/healthz", tls=held[0])
        metrics = wait_until(lambda: server.get("/metrics").text, 2, "the handshakes counted",
                             accept=lambda text: metric_sample(
                                 text, 'friendlyhello_tls_handshakes_total{outcome="ok"}') == 3)
        for tls in held:
            tls.close()
        closed = wait_until(lambda: server.get("/metrics").text, 2, "the connections closed",
                            accept=lambda text: metric_sample(text, "friendlyhello_tls_connections_open") == 0)
    assert metric_sample(metrics, "friendlyhello_tls_connections_open") == 3
    assert metric_sample(metrics, "friendlyhello_tls_certificate_not_after_seconds") == lapse
    assert abs(lapse - time.time() - 30 * 86400) < 3600  # the test certificate: 30 days
    assert metric_sample(closed, 'friendlyhello_tls_handshakes_total{outcome="ok"}') == 3


@pytest.mark.parametrize("name", ["rsa", "ecdsa", "expired", "client", "far", "leap"])
def test_the_certificate_s_lapse_is_read_from_its_der_as_openssl_reads_it(certs, name):
    said = subprocess.run(["openssl", "x509", "-in", certs.pem(name), "-noout", "-enddate"], capture_output=True,
                          text=True, check=True).stdout.strip().split("=", 1)[1]
    with open(certs.pem(name), "rb") as file:
        assert certificate_not_after(file.read(), "TLS_CERT", name) == ssl.cert_time_to_seconds(said)


def test_days_from_the_epoch_agree_with_the_calendar_on_every_day_of_two_centuries():
    from friendlyhello.tls import _days_since_epoch
    day = datetime.date(1950, 1, 1)
    while day.year < 2150:
        assert _days_since_epoch(day.year, day.month, day.day) * 86400 == calendar.timegm(day.timetuple()), day
        day += datetime.timedelta(days=1)


def test_a_certificate_file_that_is_not_one_is_refused_in_words(tmp_path):
    for text, words in ((b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n", "cannot be read"),
                        (b"-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n", "cannot be read"),
                        (b"-----BEGIN CERTIFICATE-----\n", "holds no PEM certificate")):
        with pytest.raises(TLSSetupError) as refused:
            certificate_not_after(text, "TLS_CERT", "c.pem")
        assert str(refused.value).startswith("TLS_CERT=c.pem: ") and words in str(refused.value)


def test_names_are_written_as_rfc_4514_writes_them():
    name = ((("countryName", "US"),), (("organizationName", "Acme, Inc."),),
            (("commonName", 'a+b "c" <d>;e\\f'), ("userId", "x")), (("emailAddress", "#1 "),))
    assert distinguished_name(name) == ('emailAddress=\\#1 ,CN=a\\+b \\"c\\" \\<d\\>\\;e\\\\f+UID=x,'
                                        'O=Acme\\, Inc.,C=US')
    assert distinguished_name(((("commonName", " lead"),),)) == "CN=\\ lead"
    assert distinguished_name(()) == ""


@pytest.mark.parametrize("value, elements", [
    ("Hash=abc", [{"hash": "abc"}]),
    ('By=a;Subject="CN=x,O=y;z";URI=u,By=b', [{"by": "a", "subject": "CN=x,O=y;z", "uri": "u"}, {"by": "b"}]),
    ('Subject="say \\"hi\\""; DNS=a ;DNS=b;DNS=c', [{"subject": 'say "hi"', "dns": ["a ", "b", "c"]}]),
    ("By=a, By=b,By=c", [{"by": "a"}, {"by": "b"}, {"by": "c"}]),
    ("Hash=", [{"hash": ""}]),
    ("junk", []),
])
def test_x_forwarded_client_cert_is_parsed_as_envoy_writes_it(value, elements):
    assert forwarded_client_cert(value) == elements


def test_a_client_hello_in_pieces_and_a_request_in_records_with_a_piece_of_the_next_are_served(certs):
    with serving(tls_env(certs)) as server:
        sock = socket.create_connection(("127.0.0.1", server.tls_port), timeout=5)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = client_context(certs).wrap_bio(incoming, outgoing, server_hostname="localhost")
        with pytest.raises(ssl.SSLWantReadError):
            tls.do_handshake()
        hello = outgoing.read()
        for piece in (hello[:3], hello[3:11], hello[11:]):  # the later pieces begin with any byte
            sock.sendall(piece)
            time.sleep(0.02)
        while True:
            incoming.write(sock.recv(65536))
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
        sock.sendall(outgoing.read())
        tls.write(b"GET /status/201 HTTP/1.1\r\nHost: x\r\n\r\n")
        tls.write(b"GET /status/202 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        records = outgoing.read()
        second = records.rindex(b"\x17\x03\x03")
        sock.sendall(records[:second + 7])  # the first record whole, and a piece of the second
        time.sleep(0.1)
        sock.sendall(records[second + 7:])
        answers = b""
        while b"HTTP/1.1 202" not in answers:
            data = sock.recv(65536)
            assert data, answers
            incoming.write(data)
            try:
                while chunk := tls.read(65536):  # b"": the server's close_notify
                    answers += chunk
            except ssl.SSLWantReadError:
                pass
        sock.close()
    assert re.findall(rb"HTTP/1.1 (\d+)", answers) == [b"201", b"202"]


def test_a_client_that_goes_before_its_handshake_counts_no_handshake(certs):
    with serving(tls_env(certs)) as server:
        for _ in range(3):
            socket.create_connection(("127.0.0.1", server.tls_port)).close()
        metrics = wait_until(lambda: server.get("/metrics").text, 2, "the connections closed",
                             accept=lambda text: metric_sample(text, "friendlyhello_tls_connections_open") == 0)
    assert all(metric_sample(metrics, f'friendlyhello_tls_handshakes_total{{outcome="{o}"}}') == 0
               for o in ("ok", "timeout", "plain_http", "protocol_error", "client_certificate_refused"))
