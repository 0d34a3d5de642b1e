"""Test certificates, made with the openssl command line: a CA, server certificates (RSA and
ECDSA, for localhost and 127.0.0.1), a client certificate, one from another CA, an expired
one, a key encrypted with a passphrase. Made once per test session, in a folder of its own."""

import functools
import os
import shutil
import subprocess
import tempfile

from helpers import unavailable

SERVER_NAMES = "subjectAltName=DNS:localhost,DNS:hello.test,IP:127.0.0.1,IP:::1"


class Certificates:
    """Paths of everything made: ``ca`` (its certificate), and for each name a PEM pair:
    ``pem(name)`` and ``key(name)``."""

    def __init__(self, folder):
        self.folder = folder
        self.openssl = shutil.which("openssl")
        if self.openssl is None:
            unavailable("openssl is not installed (apt-get install openssl)")
        self.ca = self._authority("ca", "friendlyhello test CA")
        self.other_ca = self._authority("other-ca", "another CA")
        self.issue("rsa", "localhost", "rsa:2048", SERVER_NAMES, "serverAuth")
        self.issue("ecdsa", "localhost", "ec", SERVER_NAMES, "serverAuth")
        self.issue("rsa2", "localhost", "rsa:2048", SERVER_NAMES, "serverAuth")  # for rotation
        self.issue("client", "test client", "ec", "subjectAltName=DNS:client.test,URI:spiffe://test/client",
                   "clientAuth")
        self.issue("stranger", "stranger", "ec", "subjectAltName=DNS:stranger.test", "clientAuth",
                   ca="other-ca")
        self.issue("expired", "localhost", "ec", SERVER_NAMES, "serverAuth", dates=("20200101000000Z",
                                                                                 "20200201000000Z"))
        # notAfter as GeneralizedTime (2050 and later), and on a leap day
        self.issue("far", "localhost", "ec", SERVER_NAMES, "serverAuth", dates=("20260101000000Z",
                                                                             "20510301000000Z"))
        self.issue("leap", "localhost", "ec", SERVER_NAMES, "serverAuth", dates=("20260101000000Z",
                                                                              "20280229123456Z"))
        self._run("pkey", "-in", self.key("ecdsa"), "-aes256", "-passout", "pass:secret",
                  "-out", self.path("encrypted.key"))

    def path(self, name):
        return os.path.join(self.folder, name)

    def pem(self, name):
        return self.path(name + ".pem")

    def key(self, name):
        return self.path(name + ".key")

    def _run(self, *args):
        result = subprocess.run([self.openssl, *args], capture_output=True, text=True, cwd=self.folder)
        assert result.returncode == 0, f"openssl {' '.join(args)}:\n{result.stderr}"

    def _authority(self, name, subject):
        self._run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                  "-keyout", self.key(name), "-out", self.pem(name), "-days", "30", "-subj", f"/CN={subject}",
                  "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        os.makedirs(self.path(name + ".db"))
        open(self.path(name + ".db/index.txt"), "w").close()
        with open(self.path(name + ".db/serial"), "w") as serial:
            serial.write("1000\n")
        return self.pem(name)

    def issue(self, name, subject, kind, names, usage, ca="ca", dates=None):
        """A key of ``kind`` (rsa:2048, ec) and its certificate, signed by ``ca`` with
        ``openssl ca`` (which can date a certificate in the past)."""
        options = ["-pkeyopt", "ec_paramgen_curve:P-256"] if kind == "ec" else []
        self._run("req", "-newkey", kind, *options, "-nodes", "-keyout", self.key(name),
                  "-out", self.path(name + ".csr"), "-subj", f"/O=friendlyhello tests/CN={subject}")
        config = self.path(name + ".cnf")
        with open(config, "w") as out:
            out.write(f"[ca]\ndefault_ca = here\n[here]\ndatabase = {ca}.db/index.txt\nserial = {ca}.db/serial\n"
                      f"new_certs_dir = {ca}.db\ndefault_md = sha256\npolicy = any\ncopy_extensions = none\n"
                      "unique_subject = no\n"
                      f"[any]\ncommonName = supplied\norganizationName = optional\n"
                      f"[ext]\nbasicConstraints = CA:FALSE\n{names}\nextendedKeyUsage = {usage}\n")
        validity = ["-startdate", dates[0], "-enddate", dates[1]] if dates else ["-days", "30"]
        self._run("ca", "-batch", "-config", config, "-extensions", "ext", "-cert", self.pem(ca),
                  "-keyfile", self.key(ca), "-in", self.path(name + ".csr"), "-out", self.pem(name),
                  "-notext", *validity)

    def chain(self, name):
        """The certificate then its CA's, in one file: what TLS_CERT holds with a chain."""
        path = self.path(name + "-chain.pem")
        with open(path, "w") as out:
            for part in (self.pem(name), self.ca):
                with open(part) as file:
                    out.write(file.read())
        return path


@functools.lru_cache(maxsize=1)
def certificates():
    return Certificates(tempfile.mkdtemp(prefix="friendlyhello-certs-"))
