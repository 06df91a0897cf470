"""SSRF protection at delivery: a receiver's host is resolved once, every address it resolves to is checked, and
the connection goes to an address checked, never to one a second resolution could give (DNS rebinding).

The check is the HTTP client's resolver (aiohttp's `AbstractResolver`, its public extension point): the client
connects to the addresses the resolver gives, and the URL keeps its host name, so the `Host` header, TLS's SNI and
the certificate's verification are all on the name, while the socket connects to a checked address. aiohttp keeps a
name's addresses for 10 s (`ttl_dns_cache`): they are the checked ones.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable

from aiohttp.abc import AbstractResolver, ResolveResult

from shared.webhooks import literal_ip, normal_host, refused_address

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""`(host, port) -> addresses`: the system's resolver, or a test's."""


class Refused(Exception):
    """A receiver whose address may not be reached: the delivery is given up (nothing was sent)."""


async def system_resolve(host: str, port: int) -> list[str]:
    """The addresses of `host`, in the order the system's resolver gives them, without repeats."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class Guard:
    """Resolves a receiver's host and refuses it when any of its addresses is private, loopback, link-local,
    multicast, reserved or unspecified, unless the host is one of `allowed_hosts` (WEBHOOK_ALLOWED_HOSTS)."""

    def __init__(self, allowed_hosts: Iterable[str], resolve: Resolver = system_resolve) -> None:
        self.allowed_hosts = frozenset(normal_host(host) for host in allowed_hosts)
        self._resolve = resolve

    async def addresses(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for `host`, all checked; Refused when one may not be reached, or none."""
        name = normal_host(host).rstrip(".")
        literal = literal_ip(name)
        found = [str(literal)] if literal is not None else await self._resolve(name, port)
        if not found:
            raise Refused(f"{name} resolves to no address")
        if name in self.allowed_hosts:
            return found
        for address in found:
            reason = refused_address(ipaddress.ip_address(address))
            if reason is not None:
                # Not the address itself: the receiver's owner sees this message, and must learn nothing of the
                # internal network's names.
                what = "is" if literal is not None else "resolves to"
                raise Refused(f"{name} {what} a {reason} address (allow the host with WEBHOOK_ALLOWED_HOSTS)")
        return found

    def check_literal(self, host: str) -> None:
        """Refused when `host` is a literal address that may not be reached (a name is checked as it resolves)."""
        name = normal_host(host).rstrip(".")
        literal = literal_ip(name)
        if literal is not None and name not in self.allowed_hosts and (reason := refused_address(literal)):
            raise Refused(f"{name} is a {reason} address (allow the host with WEBHOOK_ALLOWED_HOSTS)")


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, giving the client only addresses the guard checked (aiohttp skips resolvers for literal
    addresses: the sender checks those itself, `Guard.check_literal`)."""

    def __init__(self, guard: Guard) -> None:
        self._guard = guard

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=0,
            )
            for address in await self._guard.addresses(host, port)
        ]

    async def close(self) -> None:
        pass
