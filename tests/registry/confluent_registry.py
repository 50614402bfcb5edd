"""Confluent's own Python clients against Eddy's schema registry.

    confluent_registry.py --registry URL --eddy URL --schemas DIR [--brokers B]

Exercises the registry with SchemaRegistryClient (register, idempotent
re-register, ids shared across subjects, look up, list, versions, test
compatibility, an incompatible v3 refused with 409 and nothing changed,
subject config, soft and permanent deletes), then serializes a mix of v1 and
v2 AsyncProcessExecution events with AvroSerializer and produces them: to
Eddy's producer endpoint as raw bytes, or with --brokers to a Kafka broker
with Confluent's Producer. Finally it reads back a record Eddy encoded from
JSON and decodes it with AvroDeserializer. Prints a JSON summary; exits
non-zero on the first check that fails.
"""

import argparse
import base64
import json
import sys
import urllib.request

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

TOPIC = "async-process-execution"
SUBJECT = TOPIC + "-value"


def check(cond, what):
    if not cond:
        print("FAILED: " + what, file=sys.stderr)
        sys.exit(1)


def http(method, url, body=None):
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode())
    req.add_header("content-type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--registry", required=True)
    ap.add_argument("--eddy", required=True)
    ap.add_argument("--schemas", required=True)
    ap.add_argument("--brokers")
    args = ap.parse_args()
    v1 = open(args.schemas + "/execution-v1.avsc").read()
    v2 = open(args.schemas + "/execution-v2.avsc").read()
    v3 = json.loads(v2)
    for f in v3["fields"]:
        if f["name"] == "time":
            f["type"] = "string"  # long -> string: no reader of v2 can read it
    v3 = json.dumps(v3)

    sr = SchemaRegistryClient({"url": args.registry})
    check(sr.get_compatibility() == "BACKWARD", "default level is BACKWARD")
    id1 = sr.register_schema(SUBJECT, Schema(v1, "AVRO"))
    check(sr.register_schema(SUBJECT, Schema(v1, "AVRO")) == id1, "re-registering v1 is idempotent")
    other = sr.register_schema("other-value", Schema(v1, "AVRO"))
    check(other == id1, "an identical schema shares its id across subjects")
    found = sr.lookup_schema(SUBJECT, Schema(v1, "AVRO"))
    check(found.version == 1 and found.schema_id == id1, "look up v1")
    check(sr.test_compatibility(SUBJECT, Schema(v2, "AVRO")), "v2 is backward compatible")
    id2 = sr.register_schema(SUBJECT, Schema(v2, "AVRO"))
    check(id2 != id1, "v2 gets a new id")
    check(sr.get_versions(SUBJECT) == [1, 2], "versions 1, 2")
    check(SUBJECT in sr.get_subjects(), "subject listed")
    check(not sr.test_compatibility(SUBJECT, Schema(v3, "AVRO")), "v3 is not compatible")
    try:
        sr.register_schema(SUBJECT, Schema(v3, "AVRO"))
        check(False, "registering v3 must fail")
    except SchemaRegistryError as e:
        check(e.http_status_code == 409, "v3 refused with 409, got %s" % e.http_status_code)
    check(sr.get_versions(SUBJECT) == [1, 2], "the refused v3 changed nothing")
    latest = sr.get_latest_version(SUBJECT)
    check(latest.version == 2 and latest.schema_id == id2, "latest is v2")
    check(json.loads(sr.get_schema(id1).schema_str)["name"] == "AsyncProcessExecution", "schema by id")
    check(sr.get_version(SUBJECT, 1).schema_id == id1, "version 1 by number")
    try:
        sr.get_version(SUBJECT, 9)
        check(False, "version 9 must not exist")
    except SchemaRegistryError as e:
        check(e.error_code == 40402, "40402 for a missing version, got %s" % e.error_code)
    try:
        sr.get_schema(99999)
        check(False, "schema 99999 must not exist")
    except SchemaRegistryError as e:
        check(e.error_code == 40403, "40403 for a missing schema, got %s" % e.error_code)
    try:
        sr.register_schema("broken-value", Schema('{"type": "record", "name": "X"}', "AVRO"))
        check(False, "an invalid schema must be refused")
    except SchemaRegistryError as e:
        check(e.error_code == 42201, "42201 for an invalid schema, got %s" % e.error_code)

    # Levels: global and per subject.
    sr.set_compatibility(subject_name="other-value", level="FULL")
    check(sr.get_compatibility("other-value") == "FULL", "subject level FULL")
    sr.set_compatibility(level="BACKWARD")
    # Deletes: soft, then permanent.
    check(sr.delete_subject("other-value") == [1], "soft delete returns the versions")
    check("other-value" not in sr.get_subjects(), "soft-deleted subject hidden")
    check(sr.delete_subject("other-value", permanent=True) == [1], "permanent delete")
    sr.register_schema("scratch-value", Schema(v1, "AVRO"))
    check(sr.delete_version("scratch-value", 1) == 1, "soft delete of a version")
    check(sr.delete_version("scratch-value", 1, permanent=True) == 1, "permanent delete of a version")

    # Serialize a mix of v1 and v2 events with Confluent's serializer.
    conf = {"auto.register.schemas": False, "use.latest.version": False}
    ser1 = AvroSerializer(sr, v1, conf=conf)
    ser2 = AvroSerializer(sr, v2, conf=conf)
    ctx = SerializationContext(TOPIC, MessageField.VALUE)
    states = ["STARTED", "DONE", "ERROR", "RETRY", "REJECTED"]
    events = []
    for n in range(60):
        ev = {
            "id": "av%04d" % n,
            "asyncProcessId": "p%02d" % (n % 12),
            "log": None,
            "description": "step %d" % n,
            "params": None,
            "time": 2_000_000 + n,
            "state": states[n % len(states)],
        }
        if n % 2:
            ev["worker"] = "w%d" % (n % 3)
            payload = ser2(ev, ctx)
        else:
            payload = ser1(ev, ctx)
        check(payload[0] == 0 and int.from_bytes(payload[1:5], "big") in (id1, id2), "wire format")
        events.append((ev, payload))

    if args.brokers:
        from confluent_kafka import Producer

        p = Producer({"bootstrap.servers": args.brokers, "enable.idempotence": True, "partitioner": "murmur2_random"})
        for ev, payload in events:
            p.produce(TOPIC, key=ev["asyncProcessId"], value=payload)
        check(p.flush(60) == 0, "all events acknowledged by the broker")
    else:
        records = [{"key": ev["asyncProcessId"], "value_base64": base64.b64encode(payload).decode()} for ev, payload in events]
        answer = http("POST", args.eddy + "/v1/topics/" + TOPIC + "/records", {"records": records})
        check(len(answer["offsets"]) == len(events), "Eddy acknowledged every record")
        # Eddy encodes JSON with the latest schema; Confluent's deserializer reads it.
        http("POST", args.eddy + "/v1/topics/" + TOPIC + "/records",
             {"value": {"id": "json-1", "asyncProcessId": "p00", "time": 3_000_000, "state": "DONE", "worker": "eddy"}})
        back = http("GET", args.eddy + "/v1/topics/" + TOPIC + "/records?limit=10000")
        raw = [r for r in back["records"] if r.get("value_base64")]
        des = AvroDeserializer(sr)
        decoded = [des(base64.b64decode(r["value_base64"]), ctx) for r in raw]
        check(any(d["id"] == "json-1" and d["worker"] == "eddy" for d in decoded), "Confluent reads what Eddy encoded")

    print(json.dumps({"id1": id1, "id2": id2, "events": [ev for ev, _ in events]}))


if __name__ == "__main__":
    main()
