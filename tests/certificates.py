"""Certificates made in the test (trustme): a private CA and a broker certificate it signed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme

from headcount.ingest.tls import ServerTls

__all__ = ["Certificates", "make_certificates"]


@dataclass(frozen=True)
class Certificates:
    """The CA's certificate, the broker's chain (its own certificate first) and its key, as
    PEM files."""

    ca: Path
    chain: Path
    key: Path

    @property
    def server(self) -> ServerTls:
        return ServerTls(self.chain, self.key)


def make_certificates(directory: Path, *names: str) -> Certificates:
    """A new CA, and a certificate it signed for ``names`` (host names or IP addresses)."""
    directory.mkdir(parents=True, exist_ok=True)
    authority = trustme.CA()
    issued = authority.issue_cert(*names)
    files = Certificates(directory / "ca.pem", directory / "chain.pem", directory / "key.pem")
    authority.cert_pem.write_to_path(str(files.ca))
    for blob in issued.cert_chain_pems:
        blob.write_to_path(str(files.chain), append=True)
    issued.private_key_pem.write_to_path(str(files.key))
    return files
