"""Confluent's Python client, used by the Kafka tests as a client that is not Eddy.

    produce  --brokers B --topic T --events N --keys K [--first F] [--rate R]
             [--mark-keys K1,K2,...] --ledger FILE
        Produces AsyncProcessExecution events n = F .. F+N-1 (idempotent
        producer, keyed by asyncProcessId) and appends one JSON line per
        acknowledged event to FILE: {"id", "key", "state", "time"}. The ids
        of the events of the keys in --mark-keys end in "-x".
    dump     --brokers B --topic T
        Prints every record of the topic as a JSON line:
        {"partition", "offset", "key", "headers", "value"}.
    lag      --brokers B --group G --topic T
        Prints the group's total lag on the topic (high watermark minus
        committed offset, summed over partitions).
"""

import argparse
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
    du = sub.add_parser("dump")
    du.add_argument("--brokers", required=True)
    du.add_argument("--topic", required=True)
    la = sub.add_parser("lag")
    la.add_argument("--brokers", required=True)
    la.add_argument("--group", required=True)
    la.add_argument("--topic", required=True)
    args = ap.parse_args()
    return {"produce": produce, "dump": dump, "lag": lag}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
