"""Tries to read a file, open a socket and read the environment, and
reports what happened in an emitted record."""

import os
import socket

import eddy_sdk


def attempt(f):
    try:
        return "allowed: " + str(f())
    except BaseException as e:  # noqa: BLE001 - report whatever the sandbox raised
        return f"denied: {type(e).__name__}: {e}"


def read_file():
    with open("/etc/passwd") as f:
        return f.read(20)


def open_socket():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.connect(("127.0.0.1", 9))
    return "connected"


def read_granted():
    with open("/data/hello.txt") as f:
        return f.read()


def write_granted():
    with open("/data/new.txt", "w") as f:
        f.write("x")
    return "wrote"


def list_dir():
    return os.listdir("/")


class Probe:
    def handle(self, event, out):
        out.emit("wasi-probe-out", event.key, {
            "file": attempt(read_file),
            "dir": attempt(list_dir),
            "socket": attempt(open_socket),
            "granted_file": attempt(read_granted),
            "granted_write": attempt(write_granted),
            "env": dict(os.environ),
        })


Handler = eddy_sdk.handler(Probe)
