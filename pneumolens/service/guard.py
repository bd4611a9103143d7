"""Who may talk to the service: the ``Host`` allow-list and the same-origin rule for requests that change state.

The service has no authentication and listens on this machine, so the browser of its user is
the thing to protect against:

* **DNS rebinding**: a page on ``evil.example`` re-points its own name at 127.0.0.1 and then
  reads the service's answers as same-origin. Its requests carry ``Host: evil.example``; only
  the names the service is reached by (``localhost``, ``127.0.0.1``, ``[::1]``, the bound
  address and ``allowed_hosts``) are answered, anything else gets 400.
* **cross-site requests**: any page can make the browser POST a form to
  ``http://127.0.0.1:8000/v1/predict`` (no CORS preflight for a form). Browsers send ``Origin``
  with every cross-origin POST; one that is neither the service's own origin (the ``Host`` it
  was reached by) nor in ``cors_origins`` gets 403. Clients that send no ``Origin`` (curl,
  scripts) are not browsers acting for someone else and pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

#: Names of this machine that are always allowed in ``Host``.
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

#: Methods that change state (or cost work): these need a same-origin or allowed ``Origin``.
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

#: Bind addresses that mean "every interface": not a name a client uses.
_WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::", "*"})


def host_name(value: str) -> str:
    """The host part of a ``Host`` header or allow-list entry: lower case, no port, no brackets, no final dot."""
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:8000
        return value[1 : value.find("]")] if "]" in value else value[1:]
    if value.count(":") == 1:  # name:port (a bare IPv6 address has several colons)
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def allowed_host_names(bound: str, extra: Iterable[str]) -> frozenset[str] | None:
    """The ``Host`` names to answer; ``None`` when ``extra`` holds ``*`` (no check)."""
    extra = list(extra)
    if "*" in extra:
        return None
    names = set(LOOPBACK_HOSTS) | {host_name(h) for h in extra if h.strip()}
    if host_name(bound) not in _WILDCARD_BINDS:
        names.add(host_name(bound))
    return frozenset(names)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


class HostOriginGuard:
    """ASGI middleware: 400 for a ``Host`` not in the allow-list, 403 for a cross-origin unsafe request.

    Args:
        app: the application to guard.
        bound_host: the address the server listens on (allowed in ``Host`` unless it is a wildcard).
        allowed_hosts: further allowed names (``*``: any).
        cors_origins: origins whose unsafe requests are accepted (they also get CORS headers,
            from Starlette's ``CORSMiddleware`` inside this one).
    """

    def __init__(
        self, app: ASGIApp, bound_host: str, allowed_hosts: Iterable[str] = (), cors_origins: Iterable[str] = ()
    ) -> None:
        self.app = app
        self.hosts = allowed_host_names(bound_host, allowed_hosts)
        self.origins = frozenset(o.lower().rstrip("/") for o in cors_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = _header(scope, b"host")
        if host is not None and self.hosts is not None and host_name(host) not in self.hosts:
            detail = (
                f"Host header {host!r} is not allowed: this service answers to {', '.join(sorted(self.hosts))}; "
                "start it with --allowed-host NAME to add the name it is reached by"
            )
            await JSONResponse({"detail": detail}, status_code=400)(scope, receive, send)
            return
        origin = _header(scope, b"origin")
        if scope.get("method", "GET").upper() in UNSAFE_METHODS and origin is not None:
            allowed = origin.lower().rstrip("/") in self.origins
            if not allowed and not self._same_origin(origin, host, scope.get("scheme", "http")):
                detail = (
                    f"cross-origin request from origin {origin!r} refused; start the service with "
                    f"--cors-origin {origin} to allow that site's pages to call it"
                )
                await JSONResponse({"detail": detail}, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _same_origin(origin: str, host: str | None, scheme: str) -> bool:
        """The page was served by this service: its origin is the request's scheme + the ``Host`` it reached us by."""
        if host is None:
            return False
        parts = urlsplit(origin.strip())
        return parts.scheme.lower() == scheme.lower() and parts.netloc.lower() == host.strip().lower()
