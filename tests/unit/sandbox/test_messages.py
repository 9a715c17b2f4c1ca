"""netwrap.sandbox.messages: the wire form of each message, and the order table, with bytes."""

from __future__ import annotations

import pytest

from netwrap.errors import NetwrapError
from netwrap.sandbox import messages as m
from netwrap.sandbox.messages import Conversation, ProtocolError, Side, State
from netwrap.sandbox.setup import SetupPlan

# (message, its datagram, written out by hand)
WIRE = [
    (m.NsReady(holder_pid=4242, init_pid=4243), b'{"op":"ns-ready","holder_pid":4242,"init_pid":4243}'),
    (m.Reply(), b'{"op":"reply","error":null,"name":null,"status":null,"stdout":null,"stderr":null}'),
    (m.Reply(error="Permission denied"),
     b'{"op":"reply","error":"Permission denied","name":null,"status":null,"stdout":null,"stderr":null}'),
    (m.Reply(name="tun0"), b'{"op":"reply","error":null,"name":"tun0","status":null,"stdout":null,"stderr":null}'),
    (m.Reply(status=3, stdout="hi\n", stderr=""),
     b'{"op":"reply","error":null,"name":null,"status":3,"stdout":"hi\\n","stderr":""}'),
    (m.Started(pid=2), b'{"op":"started","pid":2}'),
    (m.Exited(status=256), b'{"op":"exited","status":256}'),
    (m.Failed(message="cannot mount /proc in the sandbox: Operation not permitted"),
     b'{"op":"error","message":"cannot mount /proc in the sandbox: Operation not permitted"}'),
    (m.SocketCall(family=2, type=524289, bind=("127.0.0.1", 0), listen=4096, options=((0, 19, 1),)),
     b'{"op":"socket","family":2,"type":524289,"proto":0,"bind":["127.0.0.1",0],"listen":4096,"options":[[0,19,1]]}'),
    (m.SocketCall(family=16, type=3, proto=12, bind=(0, 0)),
     b'{"op":"socket","family":16,"type":3,"proto":12,"bind":[0,0],"listen":null,"options":[]}'),
    (m.TunCall(name="tun0", flags=0x5001, offload=0x3F, vnet_hdr_size=12),
     b'{"op":"tun","name":"tun0","flags":20481,"offload":63,"vnet_hdr_size":12}'),
    (m.RunCall(argv=("nft", "-f", "-"), input="flush ruleset\n"),
     b'{"op":"run","argv":["nft","-f","-"],"input":"flush ruleset\\n","check":true}'),
    (m.RunCall(argv=("ip", "link"), check=False), b'{"op":"run","argv":["ip","link"],"input":null,"check":false}'),
    (m.WriteCall(path="/proc/sys/net/ipv4/ping_group_range", data="0 0"),
     b'{"op":"write","path":"/proc/sys/net/ipv4/ping_group_range","data":"0 0"}'),
    (m.BackendReady(plan=SetupPlan(binds=(("/tmp/x/resolv.conf", "/etc/resolv.conf"),), nft_path="/usr/sbin/nft",
                                   nft_ruleset="table inet t {}\n", sysctls=(("/proc/sys/a", "1"),))),
     b'{"op":"backend-ready","plan":{"binds":[["/tmp/x/resolv.conf","/etc/resolv.conf"]],'
     b'"nft_path":"/usr/sbin/nft","nft_ruleset":"table inet t {}\\n","sysctls":[["/proc/sys/a","1"]]}}'),
]


@pytest.mark.parametrize("msg,wire", WIRE, ids=[type(msg).__name__ for msg, _ in WIRE])
def test_encode_gives_the_written_bytes_and_decode_gives_the_message_back(msg, wire):
    assert m.encode(msg) == wire
    assert m.decode(wire) == msg


def test_every_message_class_has_a_wire_example():
    assert {type(msg) for msg, _ in WIRE} == set(m.OPS.values())


def test_messages_are_frozen_and_keyword_only():
    with pytest.raises(TypeError):
        m.Started(2)  # type: ignore[misc]
    with pytest.raises(AttributeError):
        m.Started(pid=2).pid = 3  # type: ignore[misc]


GARBAGE = [
    (b"", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b'{"op":"started","pid":', "not JSON"),
    (b'["started", 2]', "not a JSON object"),
    (b'{"pid": 2}', "unknown message None"),
    (b'{"op": "signal", "signal": 15}', "unknown message 'signal'"),
    (b'{"op": 7}', "unknown message 7"),
    (b'{"op": "started"}', "malformed 'started'"),
    (b'{"op": "started", "pid": "2"}', "malformed 'started'"),
    (b'{"op": "started", "pid": true}', "malformed 'started'"),
    (b'{"op": "started", "pid": 2, "extra": 1}', "unknown fields extra"),
    (b'{"op": "run", "argv": "rm -rf /"}', "malformed 'run'"),
    (b'{"op": "run", "argv": ["nft", 1]}', "malformed 'run'"),
    (b'{"op": "socket", "family": 2, "type": 1, "bind": {"a": 1}}', "malformed 'socket'"),
    (b'{"op": "backend-ready", "plan": 3}', "malformed 'backend-ready'"),
    (b'{"op": "error", "message": null}', "malformed 'error'"),
]


@pytest.mark.parametrize("wire,why", GARBAGE)
def test_garbage_is_a_protocol_error(wire, why):
    with pytest.raises(ProtocolError, match="protocol error: .*" + why.replace("(", r"\(")) as info:
        m.decode(wire)
    assert isinstance(info.value, NetwrapError)  # the CLI reports it in one line, exit 125


# --- the order ---------------------------------------------------------------------------------

P, S = Side.PARENT, Side.SANDBOX
EXAMPLE = {type(msg): msg for msg, _ in WIRE}
CALLS = [m.SocketCall, m.TunCall, m.RunCall, m.WriteCall]
LIVE = [State.STARTING, State.SETUP, State.CALLING, State.APPLYING, State.RUNNING]

# The table from the module's docstring, written out again: (state, sender, message) -> next.
ALLOWED = {
    (State.STARTING, S, m.NsReady): State.SETUP,
    **{(State.SETUP, P, c): State.CALLING for c in CALLS},
    (State.CALLING, S, m.Reply): State.SETUP,
    (State.SETUP, P, m.BackendReady): State.APPLYING,
    (State.APPLYING, S, m.Started): State.RUNNING,
    (State.RUNNING, S, m.Exited): State.DONE,
    **{(state, S, m.Failed): State.FAILED for state in LIVE},
}


def test_the_table_is_the_documented_one():
    assert m.TRANSITIONS == ALLOWED


@pytest.mark.parametrize("state,sender,kind", list(ALLOWED), ids=lambda v: getattr(v, "name", None) or
                         getattr(v, "__name__", str(v)))
def test_each_allowed_message_is_accepted_by_both_ends(state, sender, kind):
    msg = EXAMPLE[kind]
    senders_view = Conversation(side=sender, state=state)
    receivers_view = Conversation(side=P if sender is S else S, state=state)
    senders_view.sent(msg)
    receivers_view.received(msg, fds=1 if kind is m.Reply else 0)
    assert senders_view.state is receivers_view.state is ALLOWED[(state, sender, kind)]


def test_everything_else_is_refused():
    every_state = list(State)
    refused = 0
    for state in every_state:
        for sender in Side:
            for kind in m.OPS.values():
                if (state, sender, kind) in ALLOWED:
                    continue
                receiver = Conversation(side=P if sender is S else S, state=state)
                with pytest.raises(ProtocolError, match="protocol error: .* sent"):
                    receiver.received(EXAMPLE[kind])
                assert receiver.state is state  # a refused message changes nothing
                refused += 1
    # 7 states x 2 senders x 10 messages, less the 14 allowed.
    assert refused == 7 * 2 * 10 - 14


@pytest.mark.parametrize("state,sender,msg,text", [
    (State.SETUP, S, m.Started(pid=2), "the sandbox sent 'started' while the conversation was at 'setup'"),
    (State.CALLING, P, m.RunCall(argv=("true",)), "netwrap sent 'run' while the conversation was at 'calling'"),
    (State.RUNNING, P, m.WriteCall(path="/x", data=""), "netwrap sent 'write' while the conversation was at 'running'"),
    (State.STARTING, S, m.Reply(), "the sandbox sent 'reply' while the conversation was at 'starting'"),
    (State.DONE, S, m.Failed(message="late"), "the sandbox sent 'error' while the conversation was at 'done'"),
    (State.SETUP, S, m.NsReady(holder_pid=1, init_pid=2), "the sandbox sent 'ns-ready' while the conversation"),
])
def test_a_sample_of_forbidden_messages_is_named_in_the_error(state, sender, msg, text):
    with pytest.raises(ProtocolError, match=text.replace("(", r"\(")):
        Conversation(side=P if sender is S else S, state=state).received(msg)


def test_a_side_cannot_send_out_of_order_either():
    with pytest.raises(ProtocolError, match="netwrap sent 'backend-ready' while the conversation was at 'starting'"):
        Conversation(side=P).sent(m.BackendReady())


def test_only_a_reply_may_carry_file_descriptors():
    with pytest.raises(ProtocolError, match="'started' came with file descriptors"):
        Conversation(side=P, state=State.APPLYING).received(m.Started(pid=2), fds=1)


def test_a_whole_run_in_order():
    parent, init = Conversation(side=P), Conversation.for_init()
    parent.received(m.NsReady(holder_pid=10, init_pid=11))  # the holder sent it, not init
    for call, reply in ((m.TunCall(name="tun0", flags=1), m.Reply(name="tun0")),
                        (m.WriteCall(path="/p", data="1"), m.Reply())):
        parent.sent(call)
        init.received(call)
        init.sent(reply)
        parent.received(reply, fds=1)
    for msg, sender, receiver in ((m.BackendReady(), parent, init), (m.Started(pid=2), init, parent),
                                  (m.Exited(status=0), init, parent)):
        sender.sent(msg)
        receiver.received(msg)
    assert parent.state is State.DONE and init.state is State.DONE
