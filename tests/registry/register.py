"""Registers one schema with Confluent's SchemaRegistryClient.

    register.py --registry URL --subject S --schema FILE [--type AVRO]

Prints {"id": N} on success, {"status": HTTP, "error_code": C, "message": M}
when the registry refuses it; exits non-zero only on other failures.
"""

import argparse
import json

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--registry", required=True)
    ap.add_argument("--subject", required=True)
    ap.add_argument("--schema", required=True)
    ap.add_argument("--type", default="AVRO")
    args = ap.parse_args()
    sr = SchemaRegistryClient({"url": args.registry})
    try:
        print(json.dumps({"id": sr.register_schema(args.subject, Schema(open(args.schema).read(), args.type))}))
    except SchemaRegistryError as e:
        print(json.dumps({"status": e.http_status_code, "error_code": e.error_code, "message": e.error_message}))


if __name__ == "__main__":
    main()
