"""An HTTP front that injects faults in front of a real service (the tests
put it between a host and an external schema registry).

    fault_proxy.py --port P --upstream URL --mode-file F

Each request reads F: empty or missing forwards the request to URL and
returns the answer as it is; a status code (500, 502, 503...) answers that
status with an HTML body, as a failing load balancer would, without asking
the upstream.
"""

import argparse
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--mode-file", required=True)
    args = ap.parse_args()

    class Front(BaseHTTPRequestHandler):
        def fault(self):
            try:
                with open(args.mode_file, encoding="utf-8") as f:
                    mode = f.read().strip()
            except FileNotFoundError:
                mode = ""
            return int(mode) if mode else None

        def relay(self):
            status = self.fault()
            if status is not None:
                body = b"<html><body><h1>%d</h1>upstream unavailable</body></html>" % status
                self.send_response(status)
                self.send_header("content-type", "text/html")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            length = int(self.headers.get("content-length") or 0)
            data = self.rfile.read(length) if length else None
            req = urllib.request.Request(args.upstream.rstrip("/") + self.path, data=data, method=self.command)
            for k in ("accept", "content-type", "authorization"):
                if self.headers.get(k):
                    req.add_header(k, self.headers[k])
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    status, headers, body = r.status, r.headers, r.read()
            except urllib.error.HTTPError as e:
                status, headers, body = e.code, e.headers, e.read()
            except OSError as e:
                status, headers, body = 502, {"content-type": "text/plain"}, ("upstream: %s" % e).encode()
            self.send_response(status)
            self.send_header("content-type", headers.get("content-type", "application/json"))
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = relay
        do_POST = relay
        do_PUT = relay
        do_DELETE = relay

        def log_message(self, *a):
            pass

    ThreadingHTTPServer(("127.0.0.1", args.port), Front).serve_forever()


if __name__ == "__main__":
    main()
