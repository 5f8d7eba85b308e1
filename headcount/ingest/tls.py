"""TLS for MQTT: the embedded broker's certificate, how a client trusts a broker, and what a
failed handshake means, said in words that name the flag or URL to change.

A client trusts a broker one of three ways (:class:`ClientTls`): the system's trust store (an
``mqtts://`` URL as it is), the CA certificates of a file (``mqtts://...?ca=FILE``, for a
private CA; the file may also hold the broker's own certificate), or, for the service's
connection to the broker inside its own process, exactly the certificate that broker serves,
whatever names it carries (``pinned``): nobody else holds its key.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from headcount.errors import ConfigError

__all__ = [
    "CA_PARAMETER",
    "ClientTls",
    "ServerTls",
    "client_context",
    "explain_connect_failure",
    "is_untrusted",
]

#: The query parameter of an ``mqtts://`` URL naming the CA file to trust.
CA_PARAMETER = "ca"
#: OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH.
_NAME_MISMATCH = frozenset({62, 64})


@dataclass(frozen=True)
class ServerTls:
    """The embedded broker's certificate chain and private key (PEM files)."""

    cert_file: Path
    key_file: Path

    def check(self) -> None:
        """Raise :class:`ConfigError` unless the files can be read and the key is the
        certificate's: the broker would otherwise fail only when it starts."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
        except OSError as e:  # FileNotFoundError, ssl.SSLError (a bad or mismatched PEM)
            raise ConfigError(
                f"cannot use the TLS certificate {self.cert_file} with the key {self.key_file}"
                f" ({_reason(e)}); check --mqtt-tls-cert and --mqtt-tls-key: PEM files, the"
                " key unencrypted and belonging to the certificate"
            ) from None

    def first_certificate(self) -> str:
        """The broker's own certificate (the first of the chain file), in PEM."""
        text = self.cert_file.read_text(encoding="ascii")
        end = "-----END CERTIFICATE-----"
        head, found, _ = text.partition(end)
        if not found or "-----BEGIN CERTIFICATE-----" not in head:
            raise ConfigError(f"{self.cert_file} holds no PEM certificate; check --mqtt-tls-cert")
        return head[head.index("-----BEGIN CERTIFICATE-----") :] + end + "\n"


@dataclass(frozen=True)
class ClientTls:
    """How a client trusts the broker: ``ca_file`` ``None`` is the system's trust store;
    ``pinned_pem`` trusts that one certificate and no other, without checking the host name."""

    ca_file: Path | None = None
    pinned_pem: str | None = None


def client_context(tls: ClientTls) -> ssl.SSLContext:
    """An SSL context for connecting to a broker trusted as ``tls`` says. A CA file is read
    here: a missing or unreadable one raises :class:`ConfigError`."""
    if tls.pinned_pem is not None:
        context = ssl.create_default_context(cadata=tls.pinned_pem)
        context.check_hostname = False  # only the one certificate is trusted, not a CA
    elif tls.ca_file is not None:
        try:
            context = ssl.create_default_context(cafile=tls.ca_file)
        except OSError as e:
            raise ConfigError(
                f"cannot read the CA file {tls.ca_file} ({_reason(e)}); check ?{CA_PARAMETER}="
                " in the mqtts:// broker URL: a PEM file of the certificates to trust"
            ) from None
    else:
        context = ssl.create_default_context()
    # A certificate in the trust file is an anchor even if it is not a CA's own (the broker's
    # certificate itself, or an intermediate).
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def explain_connect_failure(error: BaseException, *, tls: bool, where: str) -> str | None:
    """What a failed connection to ``where`` (``host:port``) means for TLS, naming what to
    change, or ``None`` when it is not about TLS. ``error`` is aiomqtt's, whose cause paho
    raised (aiomqtt keeps it as ``__context__``)."""
    cause = _root(error)
    if isinstance(cause, ssl.SSLCertVerificationError) and cause.verify_code in _NAME_MISMATCH:
        return (
            f"the broker's TLS certificate at {where} does not carry that name"
            f" ({cause.verify_message}): connect by a host name the certificate names"
        )
    if isinstance(cause, ssl.SSLCertVerificationError):
        return (
            f"the broker's TLS certificate at {where} is not trusted ({cause.verify_message});"
            f" if a private CA signed it, add ?{CA_PARAMETER}=FILE (that CA's certificate, PEM)"
            " to the mqtts:// broker URL"
        )
    if tls and (isinstance(cause, ssl.SSLError) or "handshake" in str(cause)):
        return (
            f"no TLS handshake with {where} ({getattr(cause, 'reason', None) or cause}): if the"
            " broker listens there without TLS, use an mqtt:// URL, not mqtts://"
        )
    if not tls and _lost_before_connack(error):
        return (
            f"no answer to the MQTT CONNECT from {where}: if that port takes TLS, use an"
            " mqtts:// broker URL (with ?ca=FILE for a private CA)"
        )
    return None


def is_untrusted(error: BaseException) -> bool:
    """Whether ``error`` is the broker's certificate failing verification: waiting will not
    change that."""
    return isinstance(_root(error), ssl.SSLCertVerificationError)


def _root(error: BaseException) -> BaseException:
    seen: set[int] = set()
    while id(error) not in seen:
        seen.add(id(error))
        following = error.__cause__ or error.__context__
        if following is None:
            break
        error = following
    return error


def _lost_before_connack(error: BaseException) -> bool:
    # paho reports a connection closed during CONNECT as "connection lost" (code 7) or, once
    # the socket is gone, as a timeout waiting for CONNACK; aiomqtt passes the text on.
    text = str(error).lower()
    return any(part in text for part in ("connection was lost", "lost", "timed out", "reset"))


def _reason(error: OSError) -> str:
    if isinstance(error, ssl.SSLError):
        return str(error.reason or error)
    return error.strerror or str(error)
