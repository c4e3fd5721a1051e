"""A gRPC server on 127.0.0.1 that answers as a scenario's `grpc:` block says, for the
harness-vs-Envoy gRPC scenarios (tests/tests/scenarios.rs).

Usage: grpc_server.py ANSWERS_JSON
ANSWERS_JSON maps "/service/Method" to {"status": int, "message": str, "messages": [base64],
"initial_metadata": [[k, v]], "trailing_metadata": [[k, v]], "delay_ms": int}.

Prints "port N" once serving, then one JSON line per call it received, when the call ends:
{"method": "/service/Method", "metadata": [[k, v]] (the `x-` entries, in order),
"messages": [base64]}. Serves until stdin closes. No .proto: raw bytes in and out.
"""

import base64
import json
import sys
import threading
import time
from concurrent import futures

import grpc

answers = json.loads(sys.argv[1])
lock = threading.Lock()


def record(method, context, messages):
    md = [[k, v] for k, v in context.invocation_metadata() if k.startswith("x-")]
    line = {
        "method": method,
        "metadata": md,
        "messages": [base64.b64encode(m).decode() for m in messages],
    }
    with lock:
        print(json.dumps(line), flush=True)


def prepare(a, context):
    if a.get("initial_metadata"):
        context.send_initial_metadata([tuple(p) for p in a["initial_metadata"]])
    if a.get("trailing_metadata"):
        context.set_trailing_metadata([tuple(p) for p in a["trailing_metadata"]])
    if a.get("delay_ms"):
        time.sleep(a["delay_ms"] / 1000.0)


def finish(a, context):
    code = a.get("status", 0)
    if code != 0:
        status = next(c for c in grpc.StatusCode if c.value[0] == code)
        context.abort(status, a.get("message", ""))


def handler_for(method, a):
    # One handler for unary and streaming methods alike: on the wire a unary call is a stream
    # of one message each way.
    messages = [base64.b64decode(m) for m in a.get("messages", [])]

    def stream(request_iterator, context):
        got = list(request_iterator)
        record(method, context, got)
        prepare(a, context)
        for m in messages:
            yield m
        finish(a, context)

    return grpc.stream_stream_rpc_method_handler(stream)


class Handler(grpc.GenericRpcHandler):
    def service(self, details):
        a = answers.get(details.method)
        if a is None:
            return None  # UNIMPLEMENTED
        return handler_for(details.method, a)


server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
server.add_generic_rpc_handlers((Handler(),))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(f"port {port}", flush=True)
sys.stdin.read()
server.stop(0)
