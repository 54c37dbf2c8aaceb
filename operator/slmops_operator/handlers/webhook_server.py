"""kopf's webhook server, serving the certificate that lies in its files *now*.

cert-manager renews the webhook's certificate (by default every 60 of its 90 days); the
kubelet then updates the mounted Secret, and cert-manager's CA injector updates the
``caBundle`` the API server trusts.  kopf loads the certificate once, when its server
starts: without a reload the operator would keep serving the old certificate, and with
``failurePolicy: Fail`` every job write would be refused until the pod restarts.

Here the TLS context gets an SNI callback, which runs at every handshake: when the
certificate or key file changed (modification time or size), the new pair is loaded into a
fresh context used from that handshake on.  A pair caught half-written keeps the old one.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import kopf


def _stamp(*paths: str | os.PathLike[str] | None) -> tuple[tuple[int, int] | None, ...]:
    stamps = []
    for path in paths:
        try:
            stat = Path(path).stat() if path else None
        except OSError:
            stat = None
        stamps.append((stat.st_mtime_ns, stat.st_size) if stat else None)
    return tuple(stamps)


class ReloadingWebhookServer(kopf.WebhookServer):
    def _build_ssl(self) -> tuple[bytes | None, ssl.SSLContext | None]:
        cadata, context = super()._build_ssl()
        certfile, pkeyfile = self.certfile, self.pkeyfile
        if context is None or certfile is None or pkeyfile is None:
            return cadata, context
        current = {"stamp": _stamp(certfile, pkeyfile), "context": context}

        def serve_current_pair(sslobj, _server_name, _context) -> None:
            stamp = _stamp(certfile, pkeyfile)
            if stamp != current["stamp"]:
                try:
                    fresh = ssl.create_default_context(purpose=ssl.Purpose.CLIENT_AUTH)
                    fresh.load_cert_chain(certfile, pkeyfile, self.password)
                except (OSError, ssl.SSLError):  # half-written: serve the old pair this time
                    return None
                current.update(stamp=stamp, context=fresh)
            if current["context"] is not context:
                sslobj.context = current["context"]
            return None

        context.sni_callback = serve_current_pair
        return cadata, context
