"""`--tls-cert`/`--tls-key`: HTTPS and gRPC over TLS, certificates reloaded when the files
change (cert-manager rotates them in place; a Kubernetes Secret swaps a symlink).

HTTP: one `ssl.SSLContext`; `reload_if_changed` (polled by the hub every RELOAD_POLL
seconds) loads the new pair into it, and every handshake after that uses it. gRPC: core
asks `_grpc_config` before every new connection's handshake; it answers the new pair once
the files changed. A pair that does not load (a half-written rotation) keeps the old one.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from pathlib import Path

import grpc

from cachewire.hub.errors import ConfigError

log = logging.getLogger("cachewire.hub.tls")

RELOAD_POLL = 1.0

Stamp = tuple[tuple[float, int, int], ...]


class ServerTls:
    def __init__(self, cert: str, key: str) -> None:
        self.cert, self.key = Path(cert), Path(key)
        self.ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ssl_context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.ssl_context.set_alpn_protocols(["http/1.1"])
        try:
            self._http_stamp = self._stamp()
            self.ssl_context.load_cert_chain(self.cert, self.key)
            self._grpc_pair = self._read_pair()
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"--tls-cert/--tls-key: {exc}") from None
        self._grpc_stamp = self._http_stamp
        self._lock = threading.Lock()  # gRPC calls the fetcher from its own threads

    def _stamp(self) -> Stamp:
        out = []
        for path in (self.cert, self.key):
            st = os.stat(path)
            out.append((st.st_mtime, st.st_size, st.st_ino))
        return tuple(out)

    def _read_pair(self) -> tuple[bytes, bytes]:
        return self.key.read_bytes(), self.cert.read_bytes()

    def reload_if_changed(self) -> bool:
        """Load a changed pair into the HTTPS context; True when it did."""
        try:
            stamp = self._stamp()
            if stamp == self._http_stamp:
                return False
            self.ssl_context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            log.error("tls certificate not reloaded; the old one stays", extra={"error": str(exc)})
            return False
        self._http_stamp = stamp
        log.info("tls certificate reloaded", extra={"cert": str(self.cert)})
        return True

    def grpc_credentials(self) -> grpc.ServerCredentials:
        initial = grpc.ssl_server_certificate_configuration([self._grpc_pair])
        return grpc.dynamic_ssl_server_credentials(initial, self._grpc_config)

    def _grpc_config(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            try:
                stamp = self._stamp()
                if stamp == self._grpc_stamp:
                    return None
                pair = self._read_pair()
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(self.cert, self.key)
            except (OSError, ssl.SSLError):
                return None  # mid-rotation: the next connection tries again
            self._grpc_stamp = stamp
            return grpc.ssl_server_certificate_configuration([pair])
