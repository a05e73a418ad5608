"""Gunicorn settings for a scoring server started on this machine (not uploaded to Azure ML).

``scripts/endpoints/local_server.py`` passes this file to the gunicorn inside ``azmlinfsrv`` with
``GUNICORN_CMD_ARGS="--config ..."``. ``azmlinfsrv`` 1.4.1 starts gunicorn with ``-b 0.0.0.0:PORT``
on its command line, which outranks every config file and ``GUNICORN_CMD_ARGS``; the
``on_starting`` hook below runs before gunicorn opens its sockets and moves each address to the
host in ``AZMLINFSRV_BIND_HOST`` (127.0.0.1 unless a ``--host`` flag said otherwise), keeping
its port.

Threaded workers (``gthread``): a sync worker serves one connection at a time, so four idle or
slow connections would stop a four-worker server, health route included. A gthread worker
parks a connection that has sent nothing on its event loop, not in a thread, and serves
several connections at once. Gunicorn has no deadline for a request's head, so
:class:`LocalThreadWorker` adds one: a client that sends part of its headers and stalls is
dropped after ``HEAD_TIMEOUT_S``. The body has its own deadline in score.py. (The deployed
endpoint keeps azmlinfsrv's sync workers behind its front end: see the README's Serving section.)
"""

from __future__ import annotations

import os
from typing import Any

from gunicorn.workers.gthread import TConn, ThreadWorker

BIND_HOST_ENV = "AZMLINFSRV_BIND_HOST"
LOOPBACK = "127.0.0.1"
HEAD_TIMEOUT_S = 5.0


class _HeadTimedConn(TConn):
    def init(self) -> None:
        super().init()  # the worker calls this before it reads each request's head
        self.sock.settimeout(HEAD_TIMEOUT_S)


class LocalThreadWorker(ThreadWorker):
    """gunicorn's gthread worker with a deadline for each request's head (see above)."""

    def enqueue_req(self, conn: TConn) -> None:
        conn.__class__ = _HeadTimedConn  # the worker builds plain TConns; same state, one hook
        super().enqueue_req(conn)


worker_class = LocalThreadWorker
threads = 8
graceful_timeout = 5  # Ctrl-C or stop() waits this long for open connections, not 30 s


def rebind(addresses: list[str], host: str) -> list[str]:
    """``addresses`` (``HOST:PORT``) moved to ``host``, each keeping its port."""
    shown = f"[{host}]" if ":" in host else host  # an IPv6 address
    return [f"{shown}:{address.rsplit(':', 1)[1]}" for address in addresses]


def on_starting(server: Any) -> None:
    """Gunicorn's hook before it listens: bind the requested host instead of 0.0.0.0."""
    host = os.environ.get(BIND_HOST_ENV) or LOOPBACK
    server.cfg.set("bind", rebind(list(server.cfg.bind), host))
