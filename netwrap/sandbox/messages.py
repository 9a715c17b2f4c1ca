"""The messages netwrap and its sandbox exchange, and the order they come in.

Sans-I/O: each message is a frozen attrs class; encode() gives the bytes of
one SOCK_SEQPACKET datagram (a JSON object whose "op" names the message),
decode() turns a datagram back into a message or raises ProtocolError. File
descriptors are not part of the bytes: they travel beside them (SCM_RIGHTS),
and only a Reply may carry any. netwrap.sandbox.channel does the I/O.

The conversation, as a table (TRANSITIONS): a state, who sends, which message,
the next state. Both ends keep a Conversation and check every message they
send or receive against it, so a message out of order is a clear error at
once rather than a missing key later.

    state      sender   message            next
    starting   sandbox  NsReady            setup      (the holder, for init)
    setup      parent   SocketCall ...     calling    (one call at a time)
    calling    sandbox  Reply              setup
    setup      parent   BackendReady       applying
    applying   sandbox  Started            running
    running    sandbox  Exited             done
    any live   sandbox  Failed             failed     (init gives up; the text says why)

The holder, not init, sends NsReady; init's own copy of the conversation
starts at "setup" (Conversation.for_init).
"""

from __future__ import annotations

import enum
import json
from typing import Any, Union

import attrs

from netwrap.errors import NetwrapError
from netwrap.sandbox.setup import SetupPlan


class ProtocolError(NetwrapError):
    """A message that is not valid here: malformed, unknown, or out of order."""


def _opt(kind: type) -> Any:
    return attrs.validators.optional(attrs.validators.instance_of(kind))


def _is(kind: type) -> Any:
    return attrs.validators.instance_of(kind)


def _strict_int(_inst: Any, attribute: Any, value: Any) -> None:
    # JSON true would pass instance_of(int): a bool is never a count or an fd.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{attribute.name} must be an integer")


def _opt_int(inst: Any, attribute: Any, value: Any) -> None:
    if value is not None:
        _strict_int(inst, attribute, value)


def _tuple(value: Any) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise TypeError("expected a list")
    return tuple(value)


def _opt_tuple(value: Any) -> tuple | None:
    return None if value is None else _tuple(value)


def _tuple_of_tuples(value: Any) -> tuple:
    return tuple(_tuple(item) for item in _tuple(value))


def _all(kind: type) -> Any:
    return attrs.validators.deep_iterable(attrs.validators.instance_of(kind))


# --- sandbox -> parent --------------------------------------------------------------------------

@attrs.frozen(kw_only=True)
class NsReady:
    """The holder made the namespaces: the backend attaches to holder_pid."""

    holder_pid: int = attrs.field(validator=_strict_int)
    init_pid: int = attrs.field(validator=_strict_int)


@attrs.frozen(kw_only=True)
class Reply:
    """The answer to one call; `error` set when it failed there. A SocketCall's
    or TunCall's fd comes with it; `name` is the TUN's; the rest is a RunCall's."""

    error: str | None = attrs.field(default=None, validator=_opt(str))
    name: str | None = attrs.field(default=None, validator=_opt(str))
    status: int | None = attrs.field(default=None, validator=_opt_int)
    stdout: str | None = attrs.field(default=None, validator=_opt(str))
    stderr: str | None = attrs.field(default=None, validator=_opt(str))


@attrs.frozen(kw_only=True)
class Started:
    """Setup is applied and the command runs (its pid in the sandbox's PID namespace)."""

    pid: int = attrs.field(validator=_strict_int)


@attrs.frozen(kw_only=True)
class Exited:
    """The command ended with this wait status."""

    status: int = attrs.field(validator=_strict_int)


@attrs.frozen(kw_only=True)
class Failed:
    """The sandbox could not go on; the message is the line the user sees."""

    message: str = attrs.field(validator=_is(str))


# --- parent -> sandbox: setup-time calls (netwrap.sandbox.calls) then the go -------------------

@attrs.frozen(kw_only=True)
class SocketCall:
    family: int = attrs.field(validator=_strict_int)
    type: int = attrs.field(validator=_strict_int)
    proto: int = attrs.field(default=0, validator=_strict_int)
    bind: tuple[str | int, ...] | None = attrs.field(default=None, converter=_opt_tuple,
                                                     validator=attrs.validators.optional(_all((str, int))))
    listen: int | None = attrs.field(default=None, validator=_opt_int)
    # (level, option, value) for setsockopt, applied before bind.
    options: tuple[tuple[int, int, int], ...] = attrs.field(default=(), converter=_tuple_of_tuples,
                                                            validator=_all(tuple))


@attrs.frozen(kw_only=True)
class TunCall:
    name: str = attrs.field(validator=_is(str))
    flags: int = attrs.field(validator=_strict_int)
    offload: int | None = attrs.field(default=None, validator=_opt_int)
    vnet_hdr_size: int | None = attrs.field(default=None, validator=_opt_int)


@attrs.frozen(kw_only=True)
class RunCall:
    argv: tuple[str, ...] = attrs.field(converter=_tuple, validator=_all(str))
    input: str | None = attrs.field(default=None, validator=_opt(str))
    check: bool = attrs.field(default=True, validator=_is(bool))


@attrs.frozen(kw_only=True)
class WriteCall:
    path: str = attrs.field(validator=_is(str))
    data: str = attrs.field(validator=_is(str))


@attrs.frozen(kw_only=True)
class BackendReady:
    """The backend is up: apply this plan and start the command. Calls end here."""

    plan: SetupPlan = attrs.field(factory=SetupPlan, validator=_is(SetupPlan))


Call = Union[SocketCall, TunCall, RunCall, WriteCall]
Message = Union[NsReady, Reply, Started, Exited, Failed, SocketCall, TunCall, RunCall, WriteCall, BackendReady]

OPS: dict[str, type] = {
    "ns-ready": NsReady, "reply": Reply, "started": Started, "exited": Exited, "error": Failed,
    "socket": SocketCall, "tun": TunCall, "run": RunCall, "write": WriteCall, "backend-ready": BackendReady,
}
_OP_OF = {cls: op for op, cls in OPS.items()}
CALLS = (SocketCall, TunCall, RunCall, WriteCall)
# Only these may have file descriptors beside them.
CARRIES_FDS = (Reply,)


def op_of(msg: Message) -> str:
    return _OP_OF[type(msg)]


# --- the wire ----------------------------------------------------------------------------------

def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def encode(msg: Message) -> bytes:
    """One datagram: {"op": ..., field: value, ...}, compact, keys in field order."""
    fields: dict[str, Any] = {"op": op_of(msg)}
    if isinstance(msg, BackendReady):
        fields["plan"] = msg.plan.to_message()
    else:
        for field in attrs.fields(type(msg)):
            fields[field.name] = _jsonable(getattr(msg, field.name))
    return json.dumps(fields, separators=(",", ":")).encode()


def decode(data: bytes) -> Message:
    """The message in one datagram; ProtocolError for anything else."""
    try:
        fields = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError(f"protocol error: a message that is not JSON ({_preview(data)})") from None
    if not isinstance(fields, dict):
        raise ProtocolError(f"protocol error: a message that is not a JSON object ({_preview(data)})")
    op = fields.pop("op", None)
    cls = OPS.get(op) if isinstance(op, str) else None
    if cls is None:
        raise ProtocolError(f"protocol error: unknown message {op!r}")
    known = {f.name for f in attrs.fields(cls)}
    extra = sorted(set(fields) - known)
    if extra:
        raise ProtocolError(f"protocol error: {op!r} has unknown fields {', '.join(extra)}")
    try:
        if cls is BackendReady:
            plan = fields.get("plan")
            if not isinstance(plan, dict):
                raise TypeError("plan must be an object")
            return BackendReady(plan=SetupPlan.from_message(plan))
        return cls(**fields)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"protocol error: malformed {op!r} message: {exc}") from None


def _preview(data: bytes) -> str:
    return repr(data[:40]) + ("..." if len(data) > 40 else "")


# --- the order ----------------------------------------------------------------------------------

class Side(enum.Enum):
    PARENT = "netwrap"
    SANDBOX = "the sandbox"


class State(enum.Enum):
    STARTING = "starting"
    SETUP = "setup"
    CALLING = "calling"
    APPLYING = "applying"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


P, S = Side.PARENT, Side.SANDBOX
# (state, sender, message class) -> next state. Anything not here is refused.
TRANSITIONS: dict[tuple[State, Side, type], State] = {
    (State.STARTING, S, NsReady): State.SETUP,
    **{(State.SETUP, P, call): State.CALLING for call in CALLS},
    (State.CALLING, S, Reply): State.SETUP,
    (State.SETUP, P, BackendReady): State.APPLYING,
    (State.APPLYING, S, Started): State.RUNNING,
    (State.RUNNING, S, Exited): State.DONE,
    **{(state, S, Failed): State.FAILED
       for state in (State.STARTING, State.SETUP, State.CALLING, State.APPLYING, State.RUNNING)},
}


@attrs.define(kw_only=True)
class Conversation:
    """One end's view of the conversation: which message may come next, from whom."""

    side: Side
    state: State = State.STARTING

    @classmethod
    def for_init(cls) -> "Conversation":
        # The holder sent NsReady on this same socket; init serves calls next.
        return cls(side=Side.SANDBOX, state=State.SETUP)

    def sent(self, msg: Message) -> None:
        self._advance(self.side, msg)

    def received(self, msg: Message, *, fds: int = 0) -> None:
        other = Side.SANDBOX if self.side is Side.PARENT else Side.PARENT
        if fds and not isinstance(msg, CARRIES_FDS):
            raise ProtocolError(f"protocol error: {op_of(msg)!r} came with file descriptors")
        self._advance(other, msg)

    def _advance(self, sender: Side, msg: Message) -> None:
        following = TRANSITIONS.get((self.state, sender, type(msg)))
        if following is None:
            raise ProtocolError(f"protocol error: {sender.value} sent {op_of(msg)!r} "
                                f"while the conversation was at {self.state.value!r}")
        self.state = following
