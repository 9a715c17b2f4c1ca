"""netwrap.policy.flowlog: which events make which records, with what the policy decided."""

from __future__ import annotations

import ipaddress
import json

from netwrap.policy.flowlog import FlowBook, dumps
from netwrap.linux.nfnetlink import CtEvent, Endpoint, LoggedPacket
from netwrap.policy.nft import RULE_TAG_BASE, TAG_DEFAULT, TAG_DNS, TAG_PRIVATE, verdict_tags
from netwrap.policy.model import build_policy

ip = ipaddress.ip_address
POLICY = build_policy(allow=["93.184.215.14:80"], deny=["udp://*:5353"], block_private=True,
                      dns_servers=["169.254.0.53"])
ALLOW_TAG = RULE_TAG_BASE + 1  # deny rules are numbered first


def ep(addr: str, port: int | None) -> Endpoint:
    return Endpoint(address=ip(addr), port=port)


def ct(kind: str, *, ident: int = 1, mark: int = ALLOW_TAG, **kw) -> CtEvent:
    fields = dict(proto="tcp", src=ep("10.0.2.100", 40000), dst=ep("93.184.215.14", 80))
    fields.update(kw)
    return CtEvent(kind=kind, id=ident, mark=mark, **fields)


def test_tags_name_every_decision():
    tags = verdict_tags(POLICY)
    assert str(tags[ALLOW_TAG]) == "allow (--allow '93.184.215.14:80')"
    assert str(tags[RULE_TAG_BASE]) == "deny (--deny 'udp://*:5353')"
    assert str(tags[TAG_PRIVATE]) == "deny (--block-private)"
    assert str(tags[TAG_DEFAULT]) == "deny (default policy)"
    assert str(tags[TAG_DNS]) == "allow (the sandbox's DNS resolver)"


def test_allowed_flow_from_new_to_destroy():
    book = FlowBook(verdict_tags(POLICY))
    assert book.on_ct(ct("new", start_ns=1_700_000_000_000_000_000), 1_700_000_000.5) == []
    assert book.on_ct(ct("update", tcp_state=3), 1_700_000_000.6) == []
    assert book.on_ct(ct("update", tcp_state=7), 1_700_000_000.75) == []  # TIME_WAIT: over
    [record] = book.on_ct(ct("destroy", packets_orig=6, bytes_orig=342, packets_reply=5, bytes_reply=20372,
                             stop_ns=1_700_000_120_000_000_000), 1_700_000_120.0)
    assert record == {
        "start": "2023-11-14T22:13:20.000000Z", "end": "2023-11-14T22:13:20.750000Z", "protocol": "tcp",
        "source": {"address": "10.0.2.100", "port": 40000},
        "destination": {"address": "93.184.215.14", "port": 80},
        "verdict": "allow", "decided_by": "--allow '93.184.215.14:80'",
        "bytes_sent": 342, "bytes_received": 20372, "packets_sent": 6, "packets_received": 5,
    }
    assert book.allowed == 1 and book.blocked == 0 and book.open_flows == 0
    assert book.on_ct(ct("update", tcp_state=8), 1_700_000_121.0) == []  # late: not reopened
    assert json.loads(dumps(record)) == record and dumps(record).endswith("\n")


def test_destroy_without_new_still_counts_and_nat_is_shown():
    book = FlowBook(verdict_tags(POLICY))
    [record] = book.on_ct(ct("destroy", ident=9, mark=TAG_DNS, proto="udp", dst=ep("169.254.0.53", 53),
                             reply_src=ep("127.0.0.1", 40111), bytes_orig=60, bytes_reply=76), 10.0)
    assert record["decided_by"] == "the sandbox's DNS resolver"
    assert record["translated_destination"] == {"address": "127.0.0.1", "port": 40111}
    assert book.allowed == 1


def test_untagged_flows_are_not_logged():
    book = FlowBook(verdict_tags(POLICY))
    assert book.on_ct(ct("new", mark=0), 1.0) == [] and book.on_ct(ct("destroy", mark=0), 2.0) == []
    assert book.on_ct(ct("new", mark=9999), 1.0) == [] and book.unknown == 1
    assert book.allowed == 0


def blocked(prefix: str, dst: str = "10.20.30.40", port: int | None = 80, proto: str = "tcp") -> LoggedPacket:
    return LoggedPacket(prefix=prefix, group=1, proto=proto, src=ep("10.0.2.100", 43000 if port else None),
                        dst=ep(dst, port), length=60)


def test_refused_packets_of_one_flow_are_one_record_once_quiet():
    book = FlowBook(verdict_tags(POLICY), idle=2.0)
    assert book.on_blocked(blocked(f"nw:{TAG_PRIVATE} "), 100.0) == []
    assert book.on_blocked(blocked(f"nw:{TAG_PRIVATE} "), 101.0) == []
    assert book.next_deadline() == 103.0
    assert book.due(102.9) == []
    [record] = book.due(103.0)
    assert record["verdict"] == "deny" and record["decided_by"] == "--block-private"
    assert (record["packets_sent"], record["bytes_sent"], record["bytes_received"]) == (2, 120, 0)
    assert book.blocked == 1 and book.next_deadline() is None


def test_refused_flows_are_written_at_close_and_foreign_prefixes_ignored():
    book = FlowBook(verdict_tags(POLICY))
    book.on_blocked(blocked(f"nw:{TAG_DEFAULT} ", dst="203.0.113.1", proto="icmp", port=None), 5.0)
    book.on_blocked(blocked(f"nw:{RULE_TAG_BASE} ", dst="192.0.2.1", proto="udp", port=5353), 5.0)
    assert book.on_blocked(blocked("someone else "), 5.0) == [] and book.on_blocked(blocked("nw:x "), 5.0) == []
    records = book.close(5.1)
    assert sorted(r["decided_by"] for r in records) == ["--deny 'udp://*:5353'", "default policy"]
    icmp = next(r for r in records if r["protocol"] == "icmp")
    assert icmp["destination"] == {"address": "203.0.113.1", "port": None}
    assert book.blocked == 2 and book.unknown == 1
