"""The DNS proxy's core: query and answer bytes in, actions out (no sockets, no clock).

The sandbox's UDP queries to one resolver are redirected to a proxy that
passes them on to that resolver and reads the answers on their way back, so
the policy learns which addresses an allowed hostname has *before* the
command does (netwrap.policy.runtime). This module decides what to do with
each datagram; netwrap.dns.proxy_service owns the sockets and the thread and
carries the decisions out, in the order given.

Every datagram is untrusted: queries come from the command, answers from
the network through the backend. So:
- each query goes upstream under a fresh random id (an off-path forger has
  to guess it), and an answer is taken only from the resolver's own address
  and only for an id still pending; the client gets it back under its own id;
- the queries waiting for an answer are bounded (MAX_PENDING; when full the
  oldest is forgotten) and expire after PENDING_TIMEOUT;
- anything malformed is dropped and counted (`dropped`), never an exception;
- under a name filter (`refuse`, for --dns-allowed-only) a query for a name
  the filter refuses, or whose name cannot be read unambiguously, is answered
  REFUSED here and never reaches the resolver: names are a channel out.

Flood bounds (what a hostile command can make this core hold):
- pending queries: MAX_PENDING per resolver, each a client address and two
  ids (the query itself is not kept), for PENDING_TIMEOUT at most;
- names learned from one answer: MAX_LEARNED_NAMES (the CNAME chain);
- addresses learned per name from one answer: MAX_LEARNED_ADDRESSES;
- message size: MAX_MESSAGE; nothing larger is read or parsed.
How long learned addresses stay allowed, and how many a name keeps, is the
policy runtime's business (netwrap.policy.nft.learned_timeout).
"""

from __future__ import annotations

import collections
import ipaddress
import secrets
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Union

import attrs

from netwrap.dns import message as dnsmsg

if TYPE_CHECKING:
    from netwrap.dns.message import IPAddress

MAX_PENDING = 4096  # queries waiting for an answer, per resolver
PENDING_TIMEOUT = 10.0  # seconds; a resolver's own clients give up sooner
# The largest DNS message read: a UDP datagram's payload, and the most a TCP
# length prefix (16 bits) can announce.
MAX_MESSAGE = 65535
# Learned from one answer: names along the CNAME chain (resolvers give up
# well before: BIND follows 16 links), and addresses per name (a large
# round-robin answer has a few dozen; 64 IPv6 addresses fit a 4 KiB EDNS answer).
MAX_LEARNED_NAMES = 16
MAX_LEARNED_ADDRESSES = 64

# Why a datagram was dropped (the keys of DnsProxy.dropped).
NOT_A_QUERY = "not a query"
NOT_FROM_RESOLVER = "not from the resolver"
TRUNCATED = "shorter than a DNS header"
NOT_AN_ANSWER = "not an answer"
UNKNOWN_ID = "unknown id"
EVICTED = "pending queries full"
TOO_LARGE = "larger than MAX_MESSAGE"
NO_QUESTION = "no single readable question"  # under the name filter only


@attrs.frozen(kw_only=True)
class SendUpstream:
    """Send `data` (the query, under upstream id `id`) to the resolver."""

    data: bytes
    id: int


@attrs.frozen(kw_only=True)
class SendToClient:
    """Send `data` to `client`, the address the query came from."""

    client: Hashable
    data: bytes


@attrs.frozen(kw_only=True)
class LearnedName:
    name: str
    addresses: tuple[IPAddress, ...]
    ttl: int  # seconds, the smallest along the CNAME chain


@attrs.frozen(kw_only=True)
class Learn:
    """An answer gave these addresses for these names. Comes before the
    SendToClient that hands the answer back, so whoever acts on it is done
    before the command can use an address."""

    names: tuple[LearnedName, ...]


@attrs.frozen(kw_only=True)
class Drop:
    """A datagram was dropped (already counted in DnsProxy.dropped)."""

    reason: str


Action = Union[SendUpstream, SendToClient, Learn, Drop]


@attrs.frozen(kw_only=True)
class _Pending:
    client: Hashable
    client_id: int
    expires: float


class DnsProxy:
    """One resolver's proxy state: which upstream id belongs to which client query."""

    def __init__(self, *, resolver: tuple[str, int], max_pending: int = MAX_PENDING,
                 timeout: float = PENDING_TIMEOUT, refuse: Callable[[str], bool] | None = None) -> None:
        """refuse(name) -> True: answer queries for that name REFUSED here
        (None: every query goes upstream)."""
        if not 0 < max_pending < 1 << 16:
            raise ValueError("max_pending must leave room for fresh 16-bit ids")
        self.resolver = (ipaddress.ip_address(resolver[0]), resolver[1])
        self.max_pending = max_pending
        self.timeout = timeout
        self.dropped: collections.Counter[str] = collections.Counter()
        self.unreadable = 0  # answers passed on unread: nothing learned from them
        self.refused = 0  # queries answered REFUSED by the name filter
        self._refuse = refuse
        self._pending: dict[int, _Pending] = {}  # insertion order is age order

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _drop(self, reason: str) -> list[Action]:
        self.dropped[reason] += 1
        return [Drop(reason=reason)]

    def query(self, data: bytes, client: Hashable, now: float) -> list[Action]:
        """A datagram from the sandbox, `now` on a monotonic clock."""
        if not dnsmsg.is_query(data):
            return self._drop(NOT_A_QUERY)
        if len(data) > MAX_MESSAGE:
            return self._drop(TOO_LARGE)
        if self._refuse is not None:
            name = dnsmsg.question_name(data)
            if name is None or self._refuse(name):
                reply = dnsmsg.error_reply(data, dnsmsg.RCODE_REFUSED)
                if reply is None:  # no question to echo: nothing a client would take
                    return self._drop(NO_QUESTION)
                self.refused += 1
                return [SendToClient(client=client, data=reply)]
        actions: list[Action] = []
        if len(self._pending) >= self.max_pending:
            del self._pending[next(iter(self._pending))]
            actions += self._drop(EVICTED)
        ident = self._fresh_id()
        self._pending[ident] = _Pending(client=client, client_id=dnsmsg.message_id(data),
                                        expires=now + self.timeout)
        actions.append(SendUpstream(data=dnsmsg.with_id(data, ident), id=ident))
        return actions

    def _fresh_id(self) -> int:
        # The pending bound keeps at least 15 ids in 16 free, so this ends quickly.
        while True:
            ident = secrets.randbits(16)
            if ident not in self._pending:
                return ident

    def upstream_failed(self, sent: SendUpstream) -> list[Action]:
        """The query could not be sent: answer SERVFAIL now rather than let the client time out."""
        pending = self._pending.pop(sent.id, None)
        if pending is None:
            return []
        reply = dnsmsg.servfail(sent.data)
        if reply is None:
            return []
        return [SendToClient(client=pending.client, data=dnsmsg.with_id(reply, pending.client_id))]

    def answer(self, data: bytes, sender: tuple[str, int]) -> list[Action]:
        """A datagram that arrived on the upstream socket from `sender` (host, port)."""
        try:
            source = (ipaddress.ip_address(sender[0].split("%")[0]), sender[1])
        except ValueError:
            return self._drop(NOT_FROM_RESOLVER)
        if source != self.resolver:
            return self._drop(NOT_FROM_RESOLVER)
        if len(data) < dnsmsg.HEADER.size:
            return self._drop(TRUNCATED)
        if len(data) > MAX_MESSAGE:
            return self._drop(TOO_LARGE)
        if dnsmsg.is_query(data):
            return self._drop(NOT_AN_ANSWER)
        pending = self._pending.pop(dnsmsg.message_id(data), None)
        if pending is None:
            return self._drop(UNKNOWN_ID)  # late, or forged
        actions: list[Action] = []
        try:
            learn = learned_from(data)
        except dnsmsg.DNSFormatError:
            # Passed on all the same: the client's resolver judges it, as it
            # would without the proxy; the policy learns nothing from it.
            self.unreadable += 1
        else:
            if learn is not None:
                actions.append(learn)
        actions.append(SendToClient(client=pending.client, data=dnsmsg.with_id(data, pending.client_id)))
        return actions

    def expire(self, now: float) -> int:
        """Forget the queries whose answer is overdue; how many were forgotten."""
        overdue = [i for i, p in self._pending.items() if p.expires <= now]
        for ident in overdue:
            del self._pending[ident]
        return len(overdue)

    def next_deadline(self) -> float | None:
        """When expire() next has something to do (monotonic), or None."""
        for pending in self._pending.values():
            return pending.expires  # the oldest: every query waits the same time
        return None


def learned_from(answer: bytes) -> Learn | None:
    """What an answer teaches (None: no addresses), for answers that came
    over TCP as well; DNSFormatError if it cannot be read."""
    names = _learned(dnsmsg.parse_answer(answer))
    return Learn(names=names) if names else None


def _learned(answer: dnsmsg.Answer) -> tuple[LearnedName, ...]:
    out = []
    for name in answer.chain()[:MAX_LEARNED_NAMES]:
        addresses = answer.addresses_of(name)[:MAX_LEARNED_ADDRESSES]
        if addresses:
            ttl = answer.ttl_of(name)
            out.append(LearnedName(name=name, addresses=addresses, ttl=ttl if ttl is not None else 0))
    return tuple(out)
