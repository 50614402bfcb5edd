"""Confluent's own Protobuf and JSON Schema clients against Eddy's registry.

    confluent_schema_types.py --type protobuf|json --registry URL --eddy URL
                              --schemas DIR --topic T [--brokers B]

protobuf: builds the AsyncProcessExecution messages (v1, and v2 adding
`worker`) and the AsyncProcessState enum they import from state.proto as
descriptors, independently of Eddy, and serializes events with
ProtobufSerializer, which registers state.proto as its own subject and each
execution version with a reference to it. Checks what Confluent's client
reads back (schema type, references, lookup, an incompatible v3 refused).

json: serializes events with JSONSerializer under v1 and v2 of the JSON
Schema in DIR (both closed content models, so v2 may add `worker`), checks a
v3 that changes `time`'s type is refused, and that JSONSerializer refuses an
invalid value before it reaches Eddy.

Either way the events go to Eddy's producer endpoint as raw bytes, or with
--brokers to a Kafka broker with Confluent's Producer; then it produces a
JSON value through Eddy (which encodes it with the subject's latest schema)
and decodes it with ProtobufDeserializer / JSONDeserializer. Prints a JSON
summary (the events sent); exits non-zero on the first check that fails.
"""

import argparse
import base64
import json
import sys
import urllib.request

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

STATES = ["WAITING", "ACCEPTED", "STARTED", "DONE", "ERROR", "REJECTED", "RETRY"]


def check(cond, what):
    if not cond:
        print("FAILED: " + what, file=sys.stderr)
        sys.exit(1)


def http(method, url, body=None):
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode())
    req.add_header("content-type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def event(n, prefix):
    return {
        "id": "%s%04d" % (prefix, n),
        "asyncProcessId": "p%02d" % (n % 12),
        "description": "step %d" % n,
        "time": 4_000_000 + n,
        "state": STATES[2 + n % 5],
    }


# --- Protobuf --------------------------------------------------------------


def proto_classes():
    """The v1 and v2 message classes (and v3, whose `time` is a string),
    each in its own pool, built from descriptors written here."""
    from google.protobuf import descriptor_pb2, descriptor_pool
    from google.protobuf.message_factory import GetMessageClass

    F = descriptor_pb2.FieldDescriptorProto

    def state_file():
        fd = descriptor_pb2.FileDescriptorProto(name="state.proto", package="eddy.example", syntax="proto3")
        e = fd.enum_type.add(name="AsyncProcessState")
        for i, n in enumerate(STATES):
            e.value.add(name=n, number=i)
        return fd

    def execution_file(version):
        fd = descriptor_pb2.FileDescriptorProto(
            name="execution.proto", package="eddy.example", syntax="proto3", dependency=["state.proto"]
        )
        m = fd.message_type.add(name="AsyncProcessExecution")

        def field(name, number, typ, type_name=None, optional=False):
            f = m.field.add(name=name, number=number, type=typ, label=F.LABEL_OPTIONAL, json_name=name)
            if type_name:
                f.type_name = type_name
            if optional:
                f.oneof_index = len(m.oneof_decl)
                f.proto3_optional = True
                m.oneof_decl.add(name="_" + name)

        field("id", 1, F.TYPE_STRING)
        field("asyncProcessId", 2, F.TYPE_STRING)
        field("log", 3, F.TYPE_STRING, optional=True)
        field("description", 4, F.TYPE_STRING, optional=True)
        field("params", 5, F.TYPE_STRING, optional=True)
        field("time", 6, F.TYPE_STRING if version == 3 else F.TYPE_INT64)
        field("state", 7, F.TYPE_ENUM, ".eddy.example.AsyncProcessState")
        if version >= 2:
            field("worker", 8, F.TYPE_STRING, optional=True)
        return fd

    classes = {}
    for version in (1, 2, 3):
        pool = descriptor_pool.DescriptorPool()
        pool.Add(state_file())
        pool.Add(execution_file(version))
        classes[version] = GetMessageClass(pool.FindMessageTypeByName("eddy.example.AsyncProcessExecution"))
    return classes


def run_protobuf(args, sr, subject, ctx):
    from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer, ProtobufSerializer
    from google.protobuf import json_format

    classes = proto_classes()
    ser1 = ProtobufSerializer(classes[1], sr)
    ser2 = ProtobufSerializer(classes[2], sr)
    events = []
    for n in range(60):
        ev = event(n, "pb")
        if n % 2:
            ev["worker"] = "w%d" % (n % 3)
            payload = ser2(json_format.ParseDict(ev, classes[2]()), ctx)
        else:
            payload = ser1(json_format.ParseDict(ev, classes[1]()), ctx)
        check(payload[0] == 0, "wire format")
        events.append((ev, payload))

    check(sr.get_versions(subject) == [1, 2], "v1 and v2 registered by the serializers: %s" % sr.get_versions(subject))
    check(sr.get_versions("state.proto") == [1], "state.proto registered as its own subject")
    latest = sr.get_latest_version(subject)
    check(latest.schema.schema_type == "PROTOBUF", "schema type PROTOBUF, got %s" % latest.schema.schema_type)
    refs = latest.schema.references
    check(len(refs) == 1 and refs[0].name == "state.proto" and refs[0].subject == "state.proto", "the reference to state.proto: %s" % refs)
    found = sr.lookup_schema(subject, latest.schema)
    check(found.version == 2, "look up v2 by its schema")
    serialized = sr.get_schema(latest.schema_id, fmt="serialized")
    check(base64.b64decode(serialized.schema_str), "format=serialized answers a descriptor")
    v3 = ProtobufSerializer(classes[3], sr, {"auto.register.schemas": False})
    v3_schema = Schema(base64.b64encode(classes[3].DESCRIPTOR.file.serialized_pb).decode(), "PROTOBUF", refs)
    check(not sr.test_compatibility(subject, v3_schema), "v3 (time: int64 -> string) is not compatible")
    try:
        sr.register_schema(subject, v3_schema)
        check(False, "registering v3 must fail")
    except SchemaRegistryError as e:
        check(e.http_status_code == 409, "v3 refused with 409, got %s" % e.http_status_code)
    del v3
    send(args, events)
    if not args.brokers:
        # Eddy encodes a JSON value with the latest version; Confluent reads it.
        http("POST", args.eddy + "/v1/topics/" + args.topic + "/records",
             {"value": {"id": "eddy-1", "asyncProcessId": "p00", "time": 5_000_000, "state": "DONE", "worker": "eddy"}})
        des = ProtobufDeserializer(classes[2], {}, sr)
        decoded = [des(raw, ctx) for raw in encoded_records(args)]
        check(any(d.id == "eddy-1" and d.worker == "eddy" and d.state == 3 for d in decoded),
              "Confluent's ProtobufDeserializer reads what Eddy encoded")
    return [ev for ev, _ in events]


# --- JSON Schema -----------------------------------------------------------


def run_json(args, sr, subject, ctx):
    from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
    from confluent_kafka.serialization import SerializationError

    v1 = open(args.schemas + "/execution-v1.schema.json").read()
    v2 = open(args.schemas + "/execution-v2.schema.json").read()
    ser1 = JSONSerializer(v1, sr)
    ser2 = JSONSerializer(v2, sr)
    events = []
    for n in range(60):
        ev = event(n, "js")
        if n % 2:
            ev["worker"] = "w%d" % (n % 3)
            payload = ser2(ev, ctx)
        else:
            payload = ser1(ev, ctx)
        check(payload[0] == 0, "wire format")
        events.append((ev, payload))
    try:
        ser1({"id": "bad", "asyncProcessId": "p00", "time": "soon", "state": "DONE"}, ctx)
        check(False, "JSONSerializer must refuse an invalid value")
    except SerializationError:
        pass
    check(sr.get_versions(subject) == [1, 2], "v1 and v2 registered: %s" % sr.get_versions(subject))
    latest = sr.get_latest_version(subject)
    check(latest.schema.schema_type == "JSON", "schema type JSON, got %s" % latest.schema.schema_type)
    v3 = json.loads(v2)
    v3["properties"]["time"] = {"type": "string"}
    v3 = Schema(json.dumps(v3), "JSON")
    check(not sr.test_compatibility(subject, v3), "v3 (time: integer -> string) is not compatible")
    try:
        sr.register_schema(subject, v3)
        check(False, "registering v3 must fail")
    except SchemaRegistryError as e:
        check(e.http_status_code == 409, "v3 refused with 409, got %s" % e.http_status_code)
    send(args, events)
    if not args.brokers:
        http("POST", args.eddy + "/v1/topics/" + args.topic + "/records",
             {"value": {"id": "eddy-1", "asyncProcessId": "p00", "time": 5_000_000, "state": "DONE", "worker": "eddy"}})
        des = JSONDeserializer(None, schema_registry_client=sr)
        decoded = [des(raw, ctx) for raw in encoded_records(args)]
        check(any(d["id"] == "eddy-1" and d["worker"] == "eddy" for d in decoded),
              "Confluent's JSONDeserializer reads what Eddy encoded")
    return [ev for ev, _ in events]


# --- Shared ----------------------------------------------------------------


def send(args, events):
    if args.brokers:
        from confluent_kafka import Producer

        p = Producer({"bootstrap.servers": args.brokers, "enable.idempotence": True, "partitioner": "murmur2_random"})
        for ev, payload in events:
            p.produce(args.topic, key=ev["asyncProcessId"], value=payload)
        check(p.flush(60) == 0, "all events acknowledged by the broker")
    else:
        records = [{"key": ev["asyncProcessId"], "value_base64": base64.b64encode(payload).decode()} for ev, payload in events]
        answer = http("POST", args.eddy + "/v1/topics/" + args.topic + "/records", {"records": records})
        check(len(answer["offsets"]) == len(events), "Eddy acknowledged every record")


def encoded_records(args):
    back = http("GET", args.eddy + "/v1/topics/" + args.topic + "/records?limit=10000")
    return [base64.b64decode(r["value_base64"]) for r in back["records"] if r.get("value_base64")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--type", required=True, choices=["protobuf", "json"])
    ap.add_argument("--registry", required=True)
    ap.add_argument("--eddy", required=True)
    ap.add_argument("--schemas", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--brokers")
    args = ap.parse_args()
    sr = SchemaRegistryClient({"url": args.registry})
    subject = args.topic + "-value"
    ctx = SerializationContext(args.topic, MessageField.VALUE)
    run = run_protobuf if args.type == "protobuf" else run_json
    print(json.dumps({"events": run(args, sr, subject, ctx)}))


if __name__ == "__main__":
    main()
