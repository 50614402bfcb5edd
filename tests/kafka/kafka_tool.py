"""Confluent's Python client, used by the Kafka tests as a client that is not Eddy.

    produce  --brokers B --topic T --events N --keys K [--first F] [--rate R]
             [--mark-keys K1,K2,...] --ledger FILE
        Produces AsyncProcessExecution events n = F .. F+N-1 (idempotent
        producer, keyed by asyncProcessId) and appends one JSON line per
        acknowledged event to FILE: {"id", "key", "state", "time"}. The ids
        of the events of the keys in --mark-keys end in "-x".
    produce-mixed --brokers B --topic T --keys K --per-codec N --ledger FILE
                  --odd FILE
        What real producers send, in this order: N events with each
        compression codec (none, gzip, snappy, lz4, zstd); odd records
        (binary and null header values, a null and an empty record key,
        a null value, an empty value); then two transactions of N events,
        committed, so each partition ends with a commit marker. (No
        aborted transaction: tansu hands an aborted transaction's records
        to read_committed consumers, Confluent's own included.) Events to fold go to the
        ledger; each odd record that should be dead-lettered goes to the
        --odd file as {"class", "partition", "offset", "headers"} (header values
        base64, a null one empty).
    dump     --brokers B --topic T
        Prints every record of the topic as a JSON line:
        {"partition", "offset", "key", "headers", "value"}.
    lag      --brokers B --group G --topic T
        Prints the group's total lag on the topic (high watermark minus
        committed offset, summed over partitions).
"""

import argparse
import base64
import json
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition

STATES = ["STARTED", "DONE", "ERROR", "RETRY", "REJECTED"]


def event(n, keys):
    key = "k%05d" % ((n * 7919) % keys)
    return key, {
        "id": "e%07d" % n,
        "asyncProcessId": key,
        "time": 1_000_000 + n,
        "state": STATES[(n // 7) % len(STATES)],
        "description": "step %d" % n,
    }


def produce(args):
    p = Producer(
        {
            "bootstrap.servers": args.brokers,
            "enable.idempotence": True,
            "linger.ms": 5,
            "message.timeout.ms": 120000,
            "partitioner": args.partitioner,
        }
    )
    ledger = open(args.ledger, "a", encoding="utf-8")
    acked = 0

    def delivered(err, msg, ev):
        nonlocal acked
        if err is None:
            acked += 1
            ledger.write(json.dumps({"id": ev["id"], "key": ev["asyncProcessId"], "state": ev["state"], "time": ev["time"]}) + "\n")

    start = time.monotonic()
    marked = set(filter(None, args.mark_keys.split(",")))
    for i in range(args.events):
        n = args.first + i
        key, ev = event(n, args.keys)
        if key in marked:
            ev["id"] += "-x"
        while True:
            try:
                p.produce(args.topic, key=key, value=json.dumps(ev), on_delivery=lambda e, m, ev=ev: delivered(e, m, ev))
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
        if args.rate and i % 100 == 0:
            ahead = i / args.rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
    left = p.flush(180)
    ledger.close()
    print(json.dumps({"acked": acked, "unacked": left}))
    return 0 if left == 0 else 1


CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]


def produce_mixed(args):
    ledger = open(args.ledger, "a", encoding="utf-8")
    n = 0
    partition_of = {}
    acked = {"n": 0}

    def deliver(ev):
        def done(err, msg):
            if err is not None:
                raise SystemExit("%s not delivered: %s" % (ev and ev["id"], err))
            acked["n"] += 1
            if ev is not None:
                partition_of[ev["asyncProcessId"]] = msg.partition()
                ledger.write(json.dumps({"id": ev["id"], "key": ev["asyncProcessId"], "state": ev["state"], "time": ev["time"]}) + "\n")
        return done

    def events(p, count, to_ledger=True, mark=""):
        nonlocal n
        for _ in range(count):
            key, ev = event(n, args.keys)
            n += 1
            ev["id"] += mark
            p.produce(args.topic, key=key, value=json.dumps(ev), on_delivery=deliver(ev if to_ledger else None))
            p.poll(0)

    for codec in CODECS:
        p = Producer({"bootstrap.servers": args.brokers, "enable.idempotence": True, "linger.ms": 5,
                      "compression.type": codec, "partitioner": "murmur2_random"})
        events(p, args.per_codec)
        if p.flush(60) != 0:
            raise SystemExit("codec %s: not all delivered" % codec)

    # Odd records, each on the partition its key's events are on.
    odd = []
    p = Producer({"bootstrap.servers": args.brokers, "enable.idempotence": True, "linger.ms": 5})
    binary = [("bin", b"\x00\xff\xfe\x80"), ("none", None), ("text", b"t")]

    def one(key, value, part, headers, cls, ev=None):
        def done(err, msg):
            if err is not None:
                raise SystemExit("odd record not delivered: %s" % err)
            if ev is not None:
                ledger.write(json.dumps({"id": ev["id"], "key": ev["asyncProcessId"], "state": ev["state"], "time": ev["time"]}) + "\n")
            if cls is not None:
                odd.append({"class": cls, "partition": msg.partition(), "offset": msg.offset(),
                            "headers": [[k, base64.b64encode(v or b"").decode()] for k, v in headers]})
        p.produce(args.topic, key=key, value=value, partition=part, headers=headers, on_delivery=done)

    def next_seen():
        nonlocal n
        while event(n, args.keys)[0] not in partition_of:
            n += 1
        key, ev = event(n, args.keys)
        n += 1
        return key, ev

    for record_key in (None, b"", "binary"):
        key, ev = next_seen()
        one(key if record_key == "binary" else record_key, json.dumps(ev), partition_of[key], binary if record_key == "binary" else [], None, ev)
    key, _ = next_seen()
    one(key, None, partition_of[key], binary, "tombstone")
    one(key, b"", partition_of[key], [], "empty")
    if p.flush(60) != 0:
        raise SystemExit("odd records: not all delivered")
    with open(args.odd, "w", encoding="utf-8") as f:
        for o in odd:
            f.write(json.dumps(o) + "\n")

    # Transactions last: every partition ends with a control record.
    t = Producer({"bootstrap.servers": args.brokers, "transactional.id": "eddy-test-%d" % time.time_ns(),
                  "linger.ms": 5, "partitioner": "murmur2_random"})
    t.init_transactions(30)
    for _ in range(2):
        t.begin_transaction()
        events(t, args.per_codec)
        t.flush(60)
        t.commit_transaction(30)
    ledger.close()
    print(json.dumps({"acked": acked["n"], "odd": len(odd)}))
    return 0


def partitions_of(client, topic):
    md = client.list_topics(topic, timeout=10)
    t = md.topics.get(topic)
    if t is None or t.error is not None:
        raise SystemExit("topic %r does not exist" % topic)
    return sorted(t.partitions)


def true_ends(brokers, topic, parts):
    """End offset (last offset + 1) of each partition.

    Read from the last record batch rather than trusted from ListOffsets:
    some Kafka-protocol brokers report the last batch's base offset + 1 as
    the high watermark.
    """
    c = Consumer({"bootstrap.servers": brokers, "group.id": "kafka-tool-ends", "enable.auto.commit": False})
    ends = {}
    start = []
    for p in parts:
        _, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
        ends[p] = max(high, 0)
        if high > 0:
            start.append(TopicPartition(topic, p, high - 1))
    if start:
        c.assign(start)
        idle_until = time.monotonic() + 2.0
        while time.monotonic() < idle_until:
            got = c.consume(1000, 0.2)
            for m in got:
                if not m.error():
                    ends[m.partition()] = max(ends[m.partition()], m.offset() + 1)
            if got:
                idle_until = time.monotonic() + 0.5
    c.close()
    return ends


def dump(args):
    c = Consumer({"bootstrap.servers": args.brokers, "group.id": "kafka-tool-dump", "enable.auto.commit": False})
    parts = partitions_of(c, args.topic)
    ends = true_ends(args.brokers, args.topic, parts)
    c.assign([TopicPartition(args.topic, p, 0) for p in parts if ends[p] > 0])
    remaining = {p for p in parts if ends[p] > 0}
    deadline = time.monotonic() + 120
    while remaining and time.monotonic() < deadline:
        for m in c.consume(1000, 1.0):
            if m.error():
                continue
            headers = {k: (v or b"").decode("utf-8", "replace") for k, v in (m.headers() or [])}
            print(json.dumps({
                "partition": m.partition(),
                "offset": m.offset(),
                "key": m.key().decode() if m.key() is not None else None,
                "headers": headers,
                "value": value_of(m.value(), headers),
            }))
            if m.offset() + 1 >= ends[m.partition()]:
                remaining.discard(m.partition())
    c.close()
    if remaining:
        raise SystemExit("partitions %s of %r not read to their end" % (sorted(remaining), args.topic))
    return 0


def value_of(raw, headers):
    """A record's value as JSON: a state changelog record carries its state
    as the plugin wrote it (`eddy-state-format: msgpack` for MessagePack)."""
    if raw is None:
        return None
    if raw == b"":
        return ""
    if headers.get("eddy-state-format") == "msgpack":
        import msgpack

        return msgpack.unpackb(raw, strict_map_key=False)
    return json.loads(raw)


def lag(args):
    c = Consumer({"bootstrap.servers": args.brokers, "group.id": args.group, "enable.auto.commit": False})
    parts = partitions_of(c, args.topic)
    committed = c.committed([TopicPartition(args.topic, p) for p in parts], timeout=10)
    ends = true_ends(args.brokers, args.topic, parts)
    total = 0
    for tp in committed:
        total += max(ends[tp.partition] - max(tp.offset, 0), 0)
    c.close()
    print(total)
    return 0


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("produce")
    pr.add_argument("--brokers", required=True)
    pr.add_argument("--topic", required=True)
    pr.add_argument("--events", type=int, required=True)
    pr.add_argument("--keys", type=int, required=True)
    pr.add_argument("--first", type=int, default=0)
    pr.add_argument("--rate", type=float, default=0)
    pr.add_argument("--mark-keys", default="")
    pr.add_argument("--partitioner", default="murmur2_random")
    pr.add_argument("--ledger", required=True)
    pm = sub.add_parser("produce-mixed")
    pm.add_argument("--brokers", required=True)
    pm.add_argument("--topic", required=True)
    pm.add_argument("--keys", type=int, required=True)
    pm.add_argument("--per-codec", type=int, required=True)
    pm.add_argument("--ledger", required=True)
    pm.add_argument("--odd", required=True)
    du = sub.add_parser("dump")
    du.add_argument("--brokers", required=True)
    du.add_argument("--topic", required=True)
    la = sub.add_parser("lag")
    la.add_argument("--brokers", required=True)
    la.add_argument("--group", required=True)
    la.add_argument("--topic", required=True)
    args = ap.parse_args()
    return {"produce": produce, "produce-mixed": produce_mixed, "dump": dump, "lag": lag}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
