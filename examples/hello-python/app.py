"""A wasi:http service in Python, built into a component by componentize-py.

Every request gets 200 and a greeting that names the method and target it came with, so a
client can see that its own request reached the guest. The agent serves it per request: a fresh
instance of the component each time, its request handed to ``handle`` below.
"""

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports import types


def _method_name(method: types.Method) -> str:
    if isinstance(method, types.Method_Other):
        return method.value
    return type(method).__name__.split("_", 1)[1].upper()


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: types.IncomingRequest, response_out: types.ResponseOutparam) -> None:
        target = request.path_with_query() or "/"
        method = _method_name(request.method())
        text = f"Hello from a Python Wasm microservice! ({method} {target})\n".encode()
        headers = types.Fields.from_list(
            [("content-type", b"text/plain; charset=utf-8"), ("content-length", b"%d" % len(text))]
        )
        response = types.OutgoingResponse(headers)
        body = response.body()
        types.ResponseOutparam.set(response_out, Ok(response))
        stream = body.write()
        stream.blocking_write_and_flush(text)
        stream.__exit__(None, None, None)
        types.OutgoingBody.finish(body, None)
