"""`--tls-auto`: the injector's certificates, kept in one Secret and its caBundle.

`reconcile()` (at start and every `--reconcile-interval`):

1. Read the Secret (`ca.crt`, `ca.key`, `tls.crt`, `tls.key`). Create it if absent; a 409
   means another replica created it first, so read theirs: replicas agree without a leader.
2. Renew what is due (2/3 of its life): a new CA also re-issues the serving certificate.
   The Secret's `ca.crt` keeps the previous CA while it is valid, so the API server trusts
   old and new serving certificates alike while replicas switch over.
3. Patch `caBundle` on every webhook of our MutatingWebhookConfiguration (a no-op when it
   is already right; someone re-applying the manifests clears it, and this puts it back).
4. Load the serving certificate into the live `SSLContext` if it changed: new handshakes
   get it, no restart.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
import tempfile
from collections.abc import Callable
from pathlib import Path

from cachewire.k8s import certs
from cachewire.k8s.kubeapi import ApiError, KubeApi, secret_data

log = logging.getLogger("cachewire.injector")


class AutoTLS:
    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        service: str,
        secret: str,
        webhook_config: str,
        ca_validity: dt.timedelta = certs.CA_VALIDITY,
        leaf_validity: dt.timedelta = certs.LEAF_VALIDITY,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.secret = secret
        self.webhook_config = webhook_config
        self.dns_names = certs.dns_names(service, namespace)
        self.ca_validity = ca_validity
        self.leaf_validity = leaf_validity
        self.clock = clock
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.loaded: bytes = b""  # the serving certificate in use (PEM)
        self._dir = Path(tempfile.mkdtemp(prefix="cachewire-injector-"))

    async def reconcile(self) -> None:
        data = await self._current()
        await self.api.patch_ca_bundle(self.webhook_config, data["ca.crt"])
        if data["tls.crt"] != self.loaded:
            self._load(data["tls.crt"], data["tls.key"])
            log.info("serving certificate loaded", extra={"names": self.dns_names})

    async def _current(self) -> dict[str, bytes]:
        """The Secret's contents, created or renewed as needed (retrying a lost race)."""
        for _ in range(5):
            secret = await self.api.get_secret(self.namespace, self.secret)
            data = secret_data(secret) if secret else {}
            version = (secret or {}).get("metadata", {}).get("resourceVersion", "")
            wanted = self._renewed(data)
            if wanted is None:
                return data
            try:
                await self.api.write_secret(self.namespace, self.secret, wanted, version)
                log.info("certificates written", extra={"secret": self.secret})
                return wanted
            except ApiError as exc:
                if exc.status != 409:  # 409: another replica wrote first; use theirs
                    raise
        raise ApiError(409, f"secret {self.secret} keeps changing")

    def _renewed(self, data: dict[str, bytes]) -> dict[str, bytes] | None:
        """New contents when something is missing or due, else None."""
        keys = ("ca.crt", "ca.key", "tls.crt", "tls.key")
        now = self.clock()
        complete = all(data.get(k) for k in keys)
        if complete and not certs.due(data["ca.crt"], now) and not certs.due(data["tls.crt"], now):
            return None
        previous: list[bytes] = []
        if complete and not certs.due(data["ca.crt"], now):
            ca = certs.KeyPair(certs.valid(data["ca.crt"], now)[0], data["ca.key"])
        else:
            ca = certs.make_ca(self.ca_validity, now)
            previous = certs.valid(data["ca.crt"], now)[:1] if complete else []
            log.info("new CA", extra={"secret": self.secret})
        leaf = certs.make_leaf(ca, self.dns_names, self.leaf_validity, now)
        bundle = b"".join([ca.cert, *previous])
        return {"ca.crt": bundle, "ca.key": ca.key, "tls.crt": leaf.cert, "tls.key": leaf.key}

    def _load(self, cert: bytes, key: bytes) -> None:
        cert_file, key_file = self._dir / "tls.crt", self._dir / "tls.key"
        key_file.touch(mode=0o600)
        key_file.write_bytes(key)
        cert_file.write_bytes(cert)
        self.context.load_cert_chain(cert_file, key_file)
        self.loaded = cert
