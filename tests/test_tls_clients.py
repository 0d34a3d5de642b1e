"""TLS with clients and proxies we did not write: curl, openssl s_client, headless Chromium
trusting the test CA, HAProxy in TCP passthrough with a PROXY header v2 and in HTTP mode
re-encrypting with a client certificate, nginx's proxy_pass https:// checking the server and
presenting a client certificate. Each proxy runs with tests/proxies/'s files (docs/tls.md quotes
them). Skips locally without them; fails in CI, which installs them."""

import json
import os
import shutil
import subprocess

import pytest

from certificates import certificates
from helpers import DISABLED, Process, free_port, unavailable
from test_browser import CHROMIUM_FLAGS, chromium_path
from test_proxies import end_proxy, run_proxy, unquoted_lines
from test_tls import tls_env

pytestmark = pytest.mark.slow

ECHO = "/echo"


@pytest.fixture(scope="module")
def certs():
    return certificates()


def tool(name, package):
    path = shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        unavailable(f"{name} is not installed (apt-get install {package})")
    return path


@pytest.fixture
def server(certs):
    """friendlyhello on a TLS port, asking for client certificates (optional), trusting the
    proxies on loopback; a second one behind a PROXY header v2."""
    started = []

    def start(**extra):
        env = {**tls_env(certs, "ecdsa", TLS_CLIENT_CA=certs.ca, TLS_CLIENT_AUTH="optional",
                         TRUSTED_PROXIES="127.0.0.1"), "BIND": "127.0.0.1", "PORT": "0", **extra}
        proc = Process(env)
        started.append(proc)
        proc.wait_listening()
        return proc

    yield start
    for proc in started:
        proc.signal()
        proc.wait(10)
        proc.finish()


def curl(*args, check=True):
    result = subprocess.run([tool("curl", "curl"), "-sS", "--max-time", "10", *args], capture_output=True,
                            text=True, timeout=30)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def curl_echo(port, certs, *args, name="localhost"):
    out = curl("--cacert", certs.ca, "--resolve", f"{name}:{port}:127.0.0.1", "-H", "Accept: application/json",
               *args, f"https://{name}:{port}{ECHO}").stdout
    return json.loads(out)


def test_curl_gets_tls_1_2_and_1_3_never_below_http_1_1_when_asking_h2_and_shows_its_sni_and_certificate(
        server, certs):
    proc = server()
    port = proc.tls_port
    newest = curl_echo(port, certs, "--tlsv1.3", name="hello.test")
    older = curl_echo(port, certs, "--tlsv1.2", "--tls-max", "1.2")
    old = curl("--cacert", certs.ca, "--tlsv1.1", "--tls-max", "1.1", "--ciphers", "DEFAULT@SECLEVEL=0",
               f"https://localhost:{port}/", check=False)
    h2 = curl("--cacert", certs.ca, "--http2", "-o", "/dev/null", "-w", "%{http_version}",
              f"https://localhost:{port}/").stdout
    mutual = curl_echo(port, certs, "--cert", certs.pem("client"), "--key", certs.key("client"))
    clear = curl(f"http://127.0.0.1:{port}/", check=False)
    page = curl("--cacert", certs.ca, f"https://localhost:{port}/").stdout
    assert (newest["tls"]["version"], newest["tls"]["sni"], newest["tls"]["alpn"]) == ("TLSv1.3", "hello.test",
                                                                                       "http/1.1")
    assert older["tls"]["version"] == "TLSv1.2" and older["tls"]["cipher"].startswith("ECDHE-ECDSA-")
    assert old.returncode == 35, old.stderr  # curl: SSL connect error (the server's protocol_version alert)
    assert h2 == "1.1"
    assert mutual["tls"]["client_certificate"]["subject"] == "O=friendlyhello tests,CN=test client"
    assert "this port speaks HTTPS" in clear.stdout
    assert page.startswith("<h3>Hello world!</h3><b>Hostname:</b> ") and page.endswith(DISABLED)


def s_client(port, *args, stdin=""):
    command = [tool("openssl", "openssl"), "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
               *args]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=30)


def test_openssl_s_client_versions_alpn_and_a_resumed_session(server, certs, tmp_path):
    proc = server()
    port = proc.tls_port
    request = "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    refused = s_client(port, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    tls12 = s_client(port, "-tls1_2", "-CAfile", certs.ca, "-ign_eof", stdin=request)
    h2_only = s_client(port, "-alpn", "h2", "-ign_eof", stdin=request)
    both = s_client(port, "-alpn", "h2,http/1.1", "-ign_eof", stdin=request)
    session = str(tmp_path / "session.pem")
    first = s_client(port, "-CAfile", certs.ca, "-sess_out", session, "-ign_eof", stdin=request)
    second = s_client(port, "-CAfile", certs.ca, "-sess_in", session, "-ign_eof", stdin=request)
    renegotiate = s_client(port, "-tls1_2", stdin="R\n")  # s_client's command: renegotiate
    chained = server(TLS_CERT=certs.chain("ecdsa"))
    chain = s_client(chained.tls_port, "-showcerts", "-CAfile", certs.ca, "-verify_return_error", stdin="")
    assert refused.returncode != 0 and "alert protocol version" in refused.stdout + refused.stderr
    assert "Protocol  : TLSv1.2" in tls12.stdout and "Verify return code: 0 (ok)" in tls12.stdout
    assert "HTTP/1.1 200 OK" in tls12.stdout
    assert "No ALPN negotiated" in h2_only.stdout and "HTTP/1.1 200 OK" in h2_only.stdout
    assert "ALPN protocol: http/1.1" in both.stdout
    assert "New, TLSv1.3" in first.stdout and "Reused, TLSv1.3" in second.stdout, second.stdout[-2000:]
    assert "HTTP/1.1 200 OK" in second.stdout
    said = renegotiate.stdout + renegotiate.stderr
    assert "RENEGOTIATING" in said and "unexpected eof" in said  # refused: the connection is closed
    assert chain.stdout.count("-----BEGIN CERTIFICATE-----") == 2 and "Verify return code: 0 (ok)" in chain.stdout


@pytest.fixture
def proxy(tmp_path, certs):
    """HAProxy or nginx with tests/proxies/'s TLS files; ended by its pid."""
    started = []
    front_pem = tmp_path / "front.pem"  # HAProxy's crt: the certificate and its key in one file
    client_pem = tmp_path / "client.pem"
    for target, name in ((front_pem, "rsa"), (client_pem, "client")):
        with open(target, "w") as out:
            for part in (certs.pem(name), certs.key(name)):
                with open(part) as file:
                    out.write(file.read())

    def start(kind, **ports):
        template = "haproxy-tls.cfg" if kind == "haproxy" else "nginx-tls.conf"
        started.append(run_proxy(kind, template, tmp_path, (ports["reencrypt_port"],), ca=certs.ca,
                                 front_pem=front_pem, client_pem=client_pem, front_cert=certs.pem("rsa"),
                                 front_key=certs.key("rsa"), client_cert=certs.pem("client"),
                                 client_key=certs.key("client"), **ports))
        return started[-1]

    yield start
    for process in started:
        end_proxy(process)


def free_ports(count):
    return [free_port() for _ in range(count)]


def test_haproxy_passes_tls_through_with_a_proxy_header_and_the_client_s_address_arrives(server, proxy, certs):
    behind = server(PROXY_PROTOCOL="v2")
    passthrough, reencrypt = free_ports(2)
    direct = server(TLS_CLIENT_AUTH="require")
    proxy("haproxy", passthrough_port=passthrough, reencrypt_port=reencrypt, proxy_tls_port=behind.tls_port,
          tls_port=direct.tls_port)
    seen = curl_echo(passthrough, certs, "--interface", "127.0.0.3")
    assert seen["client"] == "127.0.0.3" and seen["peer"]["address"] == "127.0.0.1"
    assert seen["proxy_protocol"]["version"] == 2 and seen["proxy_protocol"]["source"][0] == "127.0.0.3"
    assert seen["tls"]["version"] == "TLSv1.3" and seen["tls"]["sni"] == "localhost"  # the client's own TLS


@pytest.mark.parametrize("kind", ["haproxy", "nginx"])
def test_a_proxy_that_re_encrypts_checks_the_server_and_presents_its_client_certificate(server, proxy, certs,
                                                                                       kind):
    """friendlyhello requires a client certificate here: only the proxy's gets in."""
    direct = server(TLS_CLIENT_AUTH="require")
    passthrough, reencrypt = free_ports(2)
    behind = direct if kind == "nginx" else server(PROXY_PROTOCOL="v2")
    proxy(kind, passthrough_port=passthrough, reencrypt_port=reencrypt, proxy_tls_port=behind.tls_port,
          tls_port=direct.tls_port)
    seen = curl_echo(reencrypt, certs, "--interface", "127.0.0.4")
    refused = curl("--cacert", certs.ca, f"https://localhost:{direct.tls_port}/", check=False)
    cert = seen["tls"]["client_certificate"]
    assert seen["client"] == "127.0.0.4" and seen["client_from"].startswith("X-Forwarded-For")
    assert seen["tls"]["sni"] == "localhost" and seen["tls"]["version"] in ("TLSv1.2", "TLSv1.3")
    assert cert["subject"] == "O=friendlyhello tests,CN=test client" and cert["issuer"] == "CN=friendlyhello test CA"
    assert refused.returncode != 0  # a client without one is refused at the handshake


def test_the_tls_docs_quote_the_proxy_configurations_the_tests_run():
    assert unquoted_lines("tls.md", "haproxy-tls.cfg", "nginx-tls.conf") == []


def test_headless_chromium_trusting_the_test_ca_shows_the_page_and_not_trusting_it_refuses(server, certs, tmp_path):
    browser = chromium_path()
    certutil = tool("certutil", "libnss3-tools")
    proc = server()
    url = f"https://localhost:{proc.tls_port}/"

    def dump(home):
        env = {**os.environ, "HOME": str(home)}
        result = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={home / 'profile'}", "--dump-dom", url],
                                capture_output=True, text=True, timeout=60, env=env)
        return result.stdout

    strange = dump(tmp_path / "stranger")
    home = tmp_path / "trusting"
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    subprocess.run([certutil, "-N", "-d", f"sql:{nssdb}", "--empty-password"], check=True, capture_output=True)
    subprocess.run([certutil, "-A", "-d", f"sql:{nssdb}", "-t", "C,,", "-n", "friendlyhello test CA", "-i",
                    certs.ca], check=True, capture_output=True)
    trusted = dump(home)
    out, _ = proc.finish()
    print(f"\nnot trusting the CA, Chromium showed: {strange.strip()[:160]!r}\ntrusting it: {trusted.strip()[:200]!r}")
    assert "<h3>Hello world!</h3>" not in strange
    assert "<h3>Hello world!</h3><b>Hostname:</b> " in trusted and DISABLED in trusted
    assert '"GET /" 200' in out and out.count("TLSv1.3") >= 1
