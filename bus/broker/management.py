"""A small client for RabbitMQ's management HTTP API (``rabbitmq_management``)."""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import quote

import httpx

from bus.errors import (
    AccessRefusedError,
    BrokerUnavailableError,
    ManagementAPIError,
    NotFoundError,
)
from bus.settings import BusSettings, mask_url

__all__ = ["ManagementClient", "quote_name"]


def quote_name(name: str) -> str:
    """URL-encode one path segment (``/`` becomes ``%2F``, as the API wants for vhost ``/``)."""
    return quote(name, safe="")


def _first_answering(bases: list[str], settings: BusSettings, verify: ssl.SSLContext | bool) -> str:
    """The first of a cluster's management API roots that answers HTTP at all.

    Any HTTP status counts as an answer (a 401 is the caller's to report); a refused or
    timed-out connection moves on to the next node. When none answers, the first one is
    returned so that the caller reports the usual "unreachable" error.
    """
    for base in bases:
        try:
            with httpx.Client(timeout=settings.connect_timeout, verify=verify) as client:
                client.get(base.rstrip("/") + "/api/overview")
        except httpx.TransportError:
            continue
        return base
    return bases[0]


class ManagementClient:
    """Synchronous management API calls; errors map to :mod:`bus.errors`."""

    def __init__(
        self,
        base_url: str,
        user: str,
        password: str,
        *,
        timeout: float = 10.0,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.base_url + "/api",
            auth=(user, password),
            timeout=timeout,
            verify=verify,
        )

    @classmethod
    def from_settings(cls, settings: BusSettings) -> ManagementClient:
        user, password = settings.credentials()
        verify: ssl.SSLContext | bool = True
        if settings.tls_ca_file is not None:
            verify = ssl.create_default_context(cafile=str(settings.tls_ca_file))
            if settings.tls_cert_file is not None:
                verify.load_cert_chain(
                    str(settings.tls_cert_file),
                    settings.tls_key_file and str(settings.tls_key_file),
                )
        bases = settings.management_base_urls()
        base = bases[0] if len(bases) == 1 else _first_answering(bases, settings, verify)
        return cls(base, user, password, timeout=settings.connect_timeout, verify=verify)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ManagementClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        allow_404: bool = False,
    ) -> Any:
        """One API call; returns the decoded JSON (or None for empty bodies)."""
        try:
            response = self._client.request(method, path, json=json, params=params)
        except httpx.TransportError as exc:
            raise BrokerUnavailableError(
                f"management API at {mask_url(self.base_url)} unreachable: "
                f"{exc or type(exc).__name__} "
                "(is the rabbitmq_management plugin enabled?)"
            ) from None
        if response.status_code == 404 and allow_404:
            return None
        if response.status_code >= 400:
            reason = _reason(response)
            request_line = f"{method} {path}"
            if response.status_code == 401:
                raise AccessRefusedError(
                    f"management API refused the credentials ({request_line}): {reason}"
                )
            if response.status_code == 403:
                raise AccessRefusedError(
                    f"management API access refused ({request_line}): {reason}"
                )
            if response.status_code == 404:
                raise NotFoundError(f"not found: {request_line}: {reason}")
            raise ManagementAPIError(
                f"{request_line}: {response.status_code} {reason}", response.status_code
            )
        if not response.content:
            return None
        return response.json()

    # -- vhosts and permissions -------------------------------------------------------------
    def overview(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/overview")
        return result

    def vhost(self, name: str) -> dict[str, Any] | None:
        """The vhost's definition, or None when it does not exist (or is not visible)."""
        try:
            result: dict[str, Any] | None = self.request(
                "GET", f"/vhosts/{quote_name(name)}", allow_404=True
            )
        except AccessRefusedError:
            # RabbitMQ 3.10 answers GET /vhosts/<name> only to administrators; a `management`
            # user may still list the vhosts it has permissions in, with the same fields.
            listed = self.request(
                "GET", "/vhosts", params={"columns": "name,description,default_queue_type"}
            )
            return next((v for v in listed or [] if v.get("name") == name), None)
        return result

    def create_vhost(
        self, name: str, *, default_queue_type: str | None = None, description: str | None = None
    ) -> None:
        body: dict[str, Any] = {}
        if default_queue_type:
            # 3.10 reads "defaultqueuetype" (docs/rabbitmq-behaviour.md section 3).
            body["defaultqueuetype"] = default_queue_type
        if description:
            body["description"] = description
        self.request("PUT", f"/vhosts/{quote_name(name)}", json=body)

    def delete_vhost(self, name: str) -> None:
        self.request("DELETE", f"/vhosts/{quote_name(name)}", allow_404=True)

    def set_permissions(
        self, vhost: str, user: str, *, configure: str = ".*", write: str = ".*", read: str = ".*"
    ) -> None:
        self.request(
            "PUT",
            f"/permissions/{quote_name(vhost)}/{quote_name(user)}",
            json={"configure": configure, "write": write, "read": read},
        )

    def create_user(self, user: str, password: str, tags: str = "") -> None:
        self.request("PUT", f"/users/{quote_name(user)}", json={"password": password, "tags": tags})

    def delete_user(self, user: str) -> None:
        self.request("DELETE", f"/users/{quote_name(user)}", allow_404=True)

    # -- objects of one vhost ---------------------------------------------------------------
    def _listing(
        self, kind: str, vhost: str, params: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """``GET /<kind>/<vhost>``: every exchange, queue, binding or policy of the vhost."""
        result: list[dict[str, Any]] = self.request(
            "GET", f"/{kind}/{quote_name(vhost)}", params=params
        )
        return result

    def _one(self, kind: str, vhost: str, name: str) -> dict[str, Any] | None:
        """``GET /<kind>/<vhost>/<name>``: one exchange or queue, or None when missing."""
        result: dict[str, Any] | None = self.request(
            "GET", f"/{kind}/{quote_name(vhost)}/{quote_name(name)}", allow_404=True
        )
        return result

    def exchanges(self, vhost: str) -> list[dict[str, Any]]:
        return self._listing("exchanges", vhost)

    def queues(self, vhost: str) -> list[dict[str, Any]]:
        return self._listing("queues", vhost)

    def queue(self, vhost: str, name: str) -> dict[str, Any] | None:
        return self._one("queues", vhost, name)

    def exchange(self, vhost: str, name: str) -> dict[str, Any] | None:
        return self._one("exchanges", vhost, name)

    def queue_bindings(self, vhost: str, exchange: str, queue: str) -> list[dict[str, Any]]:
        """The bindings from ``exchange`` to ``queue`` (any routing key and arguments)."""
        path = f"/bindings/{quote_name(vhost)}/e/{quote_name(exchange)}/q/{quote_name(queue)}"
        result: list[dict[str, Any]] | None = self.request("GET", path)
        return result or []

    def bindings(self, vhost: str) -> list[dict[str, Any]]:
        return self._listing("bindings", vhost)

    def policies(self, vhost: str) -> list[dict[str, Any]]:
        return self._listing("policies", vhost)

    def definitions(self, vhost: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/definitions/{quote_name(vhost)}")
        return result

    # -- listings for plan/apply: no statistics (they lag and cost time on big vhosts) ------
    def list_exchanges(self, vhost: str) -> list[dict[str, Any]]:
        return self._listing("exchanges", vhost, {"disable_stats": "true"})

    def list_queues(self, vhost: str) -> list[dict[str, Any]]:
        return self._listing(
            "queues",
            vhost,
            {
                "disable_stats": "true",
                "columns": "name,type,durable,auto_delete,exclusive,arguments,owner_pid_details",
            },
        )

    def list_bindings(self, vhost: str) -> list[dict[str, Any]]:
        return self._listing("bindings", vhost)

    def update_vhost(self, name: str, *, description: str) -> None:
        self.request("PUT", f"/vhosts/{quote_name(name)}", json={"description": description})

    def put_policy(
        self, vhost: str, name: str, *, pattern: str, apply_to: str, priority: int,
        definition: dict[str, Any],
    ) -> None:  # fmt: skip
        self.request(
            "PUT",
            f"/policies/{quote_name(vhost)}/{quote_name(name)}",
            json={
                "pattern": pattern,
                "apply-to": apply_to,
                "priority": priority,
                "definition": definition,
            },
        )

    def delete_policy(self, vhost: str, name: str) -> None:
        self.request("DELETE", f"/policies/{quote_name(vhost)}/{quote_name(name)}", allow_404=True)

    def delete_queue(self, vhost: str, name: str, *, if_empty: bool = False) -> None:
        """Delete a queue; with ``if_empty`` the broker refuses (400) when it holds messages."""
        params = {"if-empty": "true"} if if_empty else None
        self.request("DELETE", f"/queues/{quote_name(vhost)}/{quote_name(name)}", params=params)

    def delete_binding(
        self, vhost: str, source: str, destination: str, destination_type: str,
        properties_key: str,
    ) -> None:  # fmt: skip
        """Delete one binding; ``properties_key`` comes from the listing (never computed)."""
        kind = "q" if destination_type == "queue" else "e"
        self.request(
            "DELETE",
            f"/bindings/{quote_name(vhost)}/e/{quote_name(source)}/{kind}/"
            f"{quote_name(destination)}/{quote_name(properties_key)}",
        )


def _reason(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200] or response.reason_phrase
    if isinstance(body, dict):
        return str(body.get("reason") or body.get("error") or body)
    return str(body)
