"""TLS: the certificate and key from files, checked before the port is bound, read again when
the files change; and each connection's TLS layer, served by the same loop as plain HTTP.

The layer is ssl's memory BIOs, not a socket wrapped by ssl: the loop reads and writes the
socket as it does for plain HTTP and hands the bytes over. So a PROXY header before the
handshake is read as plain bytes, HTTP sent in clear is recognised and answered before any TLS
is parsed, a handshake is one more state of a connection (bounded by IDLE_TIMEOUT, blocking
nothing), and every record already received is decrypted at once: what ssl holds decrypted
(``pending()``) is taken with the rest, never left waiting for the socket to turn readable.

HTTP/1.1 only (ALPN offers http/1.1, never h2); TLS 1.2 and 1.3; Mozilla's "intermediate"
ciphers for 1.2 (1.3's are all modern); no renegotiation, no compression.
"""

import os
import ssl
import threading
import time

# Mozilla's "intermediate" configuration (version 5.7), TLS 1.2's part; the DHE suites are left
# out, as no Diffie-Hellman parameters are loaded.
CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305"))
HANDSHAKE_OUTCOMES = ("ok", "timeout", "plain_http", "protocol_error", "client_certificate_refused")
LOOK_EVERY = 1.0  # seconds between looks at the files for a change (a change is taken within 5 s)
_CLIENT_REFUSED = {"PEER_DID_NOT_RETURN_A_CERTIFICATE", "CERTIFICATE_VERIFY_FAILED",
                   "NO_CERTIFICATE_RETURNED", "TLSV13_ALERT_CERTIFICATE_REQUIRED"}
_RECORD_HANDSHAKE = 0x16  # the first byte of every TLS connection: a handshake record
_VERIFY = {"optional": ssl.CERT_OPTIONAL, "require": ssl.CERT_REQUIRED}


class TLSSetupError(Exception):
    """The certificate, key or client CA cannot be used; one line naming the setting (and
    never a byte of the key)."""


class HandshakeRefused(Exception):
    """A handshake that failed: its ``outcome`` (one of HANDSHAKE_OUTCOMES) and what TLS has
    to tell the client (an alert), to send before closing."""

    def __init__(self, outcome, detail, alert=b""):
        super().__init__(detail)
        self.outcome, self.alert = outcome, alert


class Closed(Exception):
    """The client ended TLS (close_notify) or broke it."""


# -- the files ------------------------------------------------------------------------------

def check_tls_settings(values):
    """The TLS settings (settings' values by field) that must go together: ValueError, one
    line, when they do not. The files themselves are read by TLSFiles."""
    port, cert, key = values["tls_port"], values["tls_cert"], values["tls_key"]
    if port is not None and (cert is None or key is None):
        raise ValueError("TLS_PORT needs TLS_CERT and TLS_KEY: the certificate and key files")
    if (cert is None) != (key is None):
        raise ValueError("TLS_CERT needs TLS_KEY, and TLS_KEY needs TLS_CERT: set both")
    if cert is not None and port is None:
        raise ValueError("TLS_CERT and TLS_KEY need TLS_PORT: the port to serve HTTPS on, "
                         "e.g. TLS_PORT=443")
    if values["port"] is None and port is None:
        raise ValueError("PORT=off needs TLS_PORT: with neither, nothing would be served")
    if port and port in (values["port"], values["admin_port"]):
        raise ValueError(f"TLS_PORT={port} is {'PORT' if port == values['port'] else 'ADMIN_PORT'}"
                         " too: it must be a port of its own")
    auth, ca = values["tls_client_auth"], values["tls_client_ca"]
    if auth != "off" and ca is None:
        raise ValueError(f"TLS_CLIENT_AUTH={auth} needs TLS_CLIENT_CA: the CA certificates "
                         "that client certificates are checked against")
    if ca is not None and (auth == "off" or port is None):
        raise ValueError("TLS_CLIENT_CA needs TLS_PORT and TLS_CLIENT_AUTH=optional or require")


class TLSFiles:
    """TLS_CERT, TLS_KEY and TLS_CLIENT_CA as loaded: ``context`` for new connections (open
    ones keep theirs) and ``not_after`` (the certificate's, seconds since the epoch). ``look()``
    reads them again once they change (or when ``asked``, on SIGHUP); a new set that does not
    load is logged and the old kept."""

    def __init__(self, config, log=None):
        self.cert, self.key, self.client_ca = config.tls_cert, config.tls_key, config.tls_client_ca
        self.client_auth = config.tls_client_auth
        self.log = log
        self.context, self.not_after = self._load()
        self.asked = False
        self._stamps = self._stat()
        self._next_look = time.monotonic() + LOOK_EVERY
        self._looking = threading.Lock()  # the admin port's thread looks too

    def expired(self):
        return self.not_after < time.time()

    def look(self, now):
        """Load the files again if they changed (or SIGHUP asked); at most every LOOK_EVERY s."""
        if (now < self._next_look and not self.asked) or not self._looking.acquire(blocking=False):
            return
        try:
            self._next_look = now + LOOK_EVERY
            asked, self.asked = self.asked, False  # a SIGHUP from now on is the next look's
            stamps = self._stat()
            if stamps == self._stamps and not asked:
                return
            why = "on SIGHUP" if asked else "the files changed"
            self._stamps = stamps
            try:
                self.context, self.not_after = self._load()
            except TLSSetupError as exc:
                self.log.error("tls", f"not reloaded ({why}): {exc}; the certificate loaded "
                                      "before is served still")
                return
            self.log.info("tls", f"certificate reloaded ({why}): {self.describe()}")
        finally:
            self._looking.release()

    def describe(self):
        lapses = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.not_after))
        return f"{self.cert}, not after {lapses}" + (" (EXPIRED)" if self.expired() else "")

    def _stat(self):
        """What says a file changed: a Secret volume swaps a link, an editor writes anew."""
        stamps = []
        for path in (self.cert, self.key, self.client_ca):
            try:
                st = os.stat(path) if path else None
            except OSError:
                st = None
            stamps.append(st and (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        return stamps

    def _load(self):
        cert_pem = _read_pem(self.cert, "TLS_CERT")
        not_after = certificate_not_after(cert_pem, "TLS_CERT", self.cert)
        key_pem = _read_pem(self.key, "TLS_KEY")
        if b"PRIVATE KEY-----" not in key_pem:
            raise TLSSetupError(f"TLS_KEY={self.key}: holds no PEM private key")
        if b"ENCRYPTED" in key_pem:
            raise TLSSetupError(f"TLS_KEY={self.key}: the key is protected by a passphrase, "
                                "which cannot be typed in a container: give it unencrypted "
                                "(openssl pkey -in KEY -out PLAIN), readable by this user only")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.maximum_version = ssl.TLSVersion.TLSv1_3
        context.set_ciphers(CIPHERS)
        context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
        context.set_alpn_protocols(["http/1.1"])
        context.sni_callback = _note_server_name
        try:
            context.load_cert_chain(self.cert, self.key, password=_no_passphrase)
        except ssl.SSLError as exc:
            if exc.reason in ("KEY_VALUES_MISMATCH", "NO_CERTIFICATE_ASSIGNED"):  # (another type)
                raise TLSSetupError(f"TLS_KEY={self.key} is not the key of TLS_CERT={self.cert}"
                                    ) from None
            raise TLSSetupError(f"TLS_CERT={self.cert} with TLS_KEY={self.key}: cannot be "
                                f"loaded ({exc.reason or exc.library or 'not PEM'})") from None
        if self.client_ca:
            _read_pem(self.client_ca, "TLS_CLIENT_CA")
            try:
                context.load_verify_locations(cafile=self.client_ca)
            except ssl.SSLError as exc:
                raise TLSSetupError(f"TLS_CLIENT_CA={self.client_ca}: not PEM certificates "
                                    f"({exc.reason or exc.library})") from None
            context.verify_mode = _VERIFY[self.client_auth]
        return context, not_after


def _read_pem(path, setting):
    try:
        with open(path, "rb") as file:
            data = file.read(1024 * 1024)
    except OSError as exc:
        raise TLSSetupError(f"{setting}={path}: cannot read it: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise TLSSetupError(f"{setting}={path}: not a PEM file (no -----BEGIN line)")
    return data


def _no_passphrase():
    raise TLSSetupError("TLS_KEY: the key is protected by a passphrase: give it unencrypted")


def _note_server_name(tls, server_name, context):
    tls.server_name_sent = server_name  # what /echo shows; the handshake goes on either way


def certificate_not_after(pem, setting, path):
    """The first certificate's notAfter in ``pem``, in seconds since the epoch (read from its
    DER: the standard library decodes no certificate but a peer's)."""
    start = pem.find(b"-----BEGIN CERTIFICATE-----")
    end = pem.find(b"-----END CERTIFICATE-----", start)
    if start < 0 or end < 0:
        raise TLSSetupError(f"{setting}={path}: holds no PEM certificate")
    try:
        der = ssl.PEM_cert_to_DER_cert(pem[start:end + 25].decode("ascii"))
        return _der_not_after(der)
    except (ValueError, IndexError, UnicodeDecodeError):
        raise TLSSetupError(f"{setting}={path}: its first certificate cannot be read") from None


def _der_item(der, at):
    """The DER item at ``at``: its tag, where its content starts and where it ends."""
    tag, length, at = der[at], der[at + 1], at + 2
    if length & 0x80:
        count = length & 0x7F
        length, at = int.from_bytes(der[at:at + count], "big"), at + count
    if at + length > len(der):
        raise ValueError("truncated")
    return tag, at, at + length


def _der_not_after(der):
    _, at, _ = _der_item(der, 0)       # Certificate
    _, at, _ = _der_item(der, at)      # tbsCertificate
    tag, _, end = _der_item(der, at)
    if tag == 0xA0:                    # [0] version
        at = end
    for _ in range(3):                 # serialNumber, signature, issuer
        at = _der_item(der, at)[2]
    _, at, _ = _der_item(der, at)      # validity
    at = _der_item(der, at)[2]         # notBefore
    tag, start, end = _der_item(der, at)
    text = der[start:end].decode("ascii")
    if tag == 0x17:                    # UTCTime, YYMMDDHHMMSSZ: 1950 to 2049
        year = int(text[:2])
        text = str(year + (1900 if year >= 50 else 2000)) + text[2:]
    elif tag != 0x18:                  # GeneralizedTime, YYYYMMDDHHMMSSZ
        raise ValueError("not a time")
    y, mo, d, h, mi, s = (int(text[i:j]) for i, j in ((0, 4), (4, 6), (6, 8), (8, 10),
                                                         (10, 12), (12, 14)))
    return _days_since_epoch(y, mo, d) * 86400 + h * 3600 + mi * 60 + s


def _days_since_epoch(y, m, d):
    """Days from 1970-01-01 to the date (Howard Hinnant's days_from_civil)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    return era * 146097 + (yoe * 365 + yoe // 4 - yoe // 100 + doy) - 719468


# -- a connection's TLS layer ---------------------------------------------------------------


class Channel:
    """One connection's TLS: bytes from the socket go in, the request's bytes come out, and
    what TLS has to send (its handshake, records, alerts) is taken by the caller to send."""

    __slots__ = ("_incoming", "_outgoing", "tls", "started", "version")

    def __init__(self, context):
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self.started = False  # the handshake has had its first bytes
        self.version = None   # once the handshake is over, the version it agreed (TLSv1.3)

    def receive(self, data):
        """Bytes from the socket in, the plain bytes they complete out (b"": none yet).
        HandshakeRefused when the handshake fails (its outcome "plain_http" when the client
        spoke HTTP in clear: TLS begins with a handshake record, HTTP with a letter); Closed
        when TLS has ended."""
        if self.version:
            return self.decrypt(data)
        if not self.started and data[0] != _RECORD_HANDSHAKE:
            plain = data[:1].isalpha()
            raise HandshakeRefused("plain_http" if plain else "protocol_error", "not TLS")
        return self.handshake(data)

    def handshake(self, data):
        """Go on with the handshake with ``data``; once it is done, the request bytes that
        came with it. HandshakeRefused when it fails."""
        self.started = True
        self._incoming.write(data)
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            return b""
        except ssl.SSLError as exc:
            reason = exc.reason or "SSL_ERROR"
            refused = reason in _CLIENT_REFUSED
            outcome = "client_certificate_refused" if refused else "protocol_error"
            raise HandshakeRefused(outcome, reason, self._outgoing.read()) from None
        self.version = self.tls.version()
        return self.decrypt(b"")

    def decrypt(self, data):
        """The plain bytes of every whole record received so far; Closed at TLS's end."""
        if data:
            self._incoming.write(data)
        chunks = []
        while self._incoming.pending or self.tls.pending():
            try:
                chunk = self.tls.read(65536)
            except ssl.SSLWantReadError:
                break  # the rest of a record is still to come
            except ssl.SSLError:  # close_notify (SSLZeroReturnError), or a broken record
                raise Closed from None
            if not chunk:
                raise Closed
            chunks.append(chunk)
        return b"".join(chunks)

    def output(self):
        """What TLS has to send now (handshake messages, tickets, alerts)."""
        return self._outgoing.read() if self._outgoing.pending else b""

    def encrypt(self, data, close=False):
        """``data`` as records, after anything TLS had to send; with ``close``, TLS's
        close_notify after it (the connection closes)."""
        if data:
            self.tls.write(data)
        if close:
            try:
                self.tls.unwrap()
            except ssl.SSLError:  # waiting for the client's close_notify, which we do not need
                pass
        return self._outgoing.read()

    def info(self):
        """What TLS carried, for /echo."""
        cipher = self.tls.cipher()
        der = self.tls.getpeercert(binary_form=True)
        return {
            "version": self.version,
            "cipher": cipher[0] if cipher else None,
            "sni": getattr(self.tls, "server_name_sent", None),
            "alpn": self.tls.selected_alpn_protocol(),
            "resumed": self.tls.session_reused,
            "client_certificate": der and client_certificate(self.tls.getpeercert(), der),
        }


_SHORT_NAMES = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
                "countryName": "C", "localityName": "L", "stateOrProvinceName": "ST",
                "domainComponent": "DC", "userId": "UID", "streetAddress": "STREET"}


def distinguished_name(rdns):
    """A name as RFC 4514 writes it (as ``openssl x509 -nameopt RFC2253`` and Envoy do): its
    last part first, short attribute names, special characters escaped."""
    def escaped(value):
        value = "".join("\\" + c if c in ',+"\\<>;' else c for c in value)
        return "\\" + value if value[:1] in ("#", " ") else value

    return ",".join("+".join(f"{_SHORT_NAMES.get(key, key)}={escaped(value)}" for key, value in rdn)
                    for rdn in reversed(rdns))


def client_certificate(decoded, der):
    """A verified client certificate, as /echo shows it."""
    import hashlib  # only where a client certificate is shown

    name = distinguished_name

    return {
        "subject": name(decoded.get("subject", ())),
        "issuer": name(decoded.get("issuer", ())),
        "sans": [f"{kind}:{value}" for kind, value in decoded.get("subjectAltName", ())],
        "serial": decoded.get("serialNumber"),
        "not_after": decoded.get("notAfter"),
        "sha256": hashlib.sha256(der).hexdigest(),
    }


def forwarded_client_cert(value):
    """Envoy's X-Forwarded-Client-Cert: elements by comma, key=value pairs by semicolon, values
    quoted where they hold those; each element as {key: value} (a key given again: a list)."""
    elements, element, pairs = [], {}, _xfcc_pairs(value)
    for key, text, ends_element in pairs:
        if key:
            key = key.strip().lower()
            if key in element:
                element[key] = [*element[key], text] if isinstance(element[key], list) else [
                    element[key], text]
            else:
                element[key] = text
        if ends_element and element:
            elements.append(element)
            element = {}
    return elements


def _xfcc_pairs(value):
    """(key, value, ends an element) for each pair of the header, quotes removed."""
    at, pairs = 0, []
    while at < len(value):
        equals = value.find("=", at)
        if equals < 0:
            break
        key, at = value[at:equals], equals + 1
        if value[at:at + 1] == '"':
            text, at = [], at + 1
            while at < len(value) and value[at] != '"':
                if value[at] == "\\" and at + 1 < len(value):
                    at += 1
                text.append(value[at])
                at += 1
            text, at = "".join(text), at + 1
        else:
            stop = min((i for i in (value.find(";", at), value.find(",", at)) if i >= 0),
                       default=len(value))
            text, at = value[at:stop], stop
        ends = at >= len(value) or value[at] == ","
        pairs.append((key.lstrip(" ;,"), text, ends))
        at += 1
    return pairs
