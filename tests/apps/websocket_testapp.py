"""A raw ASGI app with WebSocket routes, for tests/test_websocket_served.py, the conformance
cases and the browser test. Each route does one thing an app may do with a WebSocket.

    /echo               accept, echo every message (text as text, bytes as bytes) until disconnect
    /echo-log/NAME      /echo, and the disconnect's code logged as "NAME disconnect CODE"
    /deny               websocket.close before accepting: the client gets 403
    /raise-before       raises before accepting: 500
    /return-before      returns before accepting: 500
    /raise-after        accepts, sends "hello", raises: close 1011
    /close/CODE         accepts, sends "bye", closes with CODE and a reason
    /returns            accepts, sends "done", returns without closing: close 1000
    /scope              accepts with the first subprotocol offered, sends its scope as JSON
    /headers            accepts with a header of its own
    /no-receive         accepts and never receives (a fast client fills its window)
    /flood?n=N&size=S   accepts, sends N binary messages of S bytes, then waits for the client's close
    /linger/NAME        accepts; after the disconnect keeps running, logs "NAME still running"
    /crash              accepts; the worker process exits at the first message
    /concurrent?n=N&size=S  accepts; N tasks at once each send a binary message of S bytes of its own
    /accept-when?file=F     waits until the file F exists, then accepts and echoes (a slow accept)
    /                   HTTP: an HTML page whose script echoes messages through /echo (the browser test)
    /report?...         HTTP: what the page reports, logged as "browser reported ..."
"""

import asyncio
import json
import logging
import os
from urllib.parse import parse_qs

log = logging.getLogger("websocket_testapp")

PAGE = """<!doctype html>
<html><head><title>waiting</title></head><body><pre id="out">waiting</pre>
<script>
const messages = ["hello", "wörld ✓", "x".repeat(70000)];
const got = [];
const ws = new WebSocket("ws://" + location.host + "/echo-log/browser", ["chat"]);
function done(result) {
  document.title = result;
  document.getElementById("out").textContent = result;
  fetch("/report?result=" + encodeURIComponent(result));
}
ws.onopen = () => { for (const m of messages) ws.send(m); ws.send(new Uint8Array([0, 1, 2, 255])); };
ws.onmessage = (event) => {
  got.push(event.data);
  if (got.length === messages.length + 1) {
    const texts = got.slice(0, messages.length).every((m, i) => m === messages[i]);
    event.data.arrayBuffer ? event.data.arrayBuffer().then((buf) => {
      const bytes = Array.from(new Uint8Array(buf)).join(",");
      done((texts && bytes === "0,1,2,255" ? "echo ok " : "echo wrong ") + got.length + " protocol=" + ws.protocol);
      ws.close(1000, "bye");
    }) : done("echo wrong: binary came back as text");
  }
};
ws.onerror = () => done("error");
</script></body></html>
"""


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                scope["state"]["pid"] = os.getpid()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "http":
        await http(scope, receive, send)
        return
    path = scope["path"]
    route = ROUTES.get(path) or ROUTES.get("/" + path.split("/")[1] + "/")
    assert (await receive())["type"] == "websocket.connect"
    await route(scope, receive, send)


async def http(scope, receive, send):
    await receive()
    if scope["path"] == "/report":
        query = parse_qs(scope["query_string"].decode())
        log.warning("browser reported %s", query.get("result", ["?"])[0])
        body, kind = b"ok", b"text/plain"
    else:
        body, kind = PAGE.encode(), b"text/html; charset=utf-8"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", kind)]})
    await send({"type": "http.response.body", "body": body})


async def echo(scope, receive, send, name=None):
    await send({"type": "websocket.accept", "subprotocol": (scope["subprotocols"] or [None])[0]})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            if name:
                log.warning("%s disconnect %s", name, message["code"])
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


async def echo_log(scope, receive, send):
    await echo(scope, receive, send, scope["path"].split("/")[2])


async def deny(scope, receive, send):
    await send({"type": "websocket.close", "code": 1008})


async def raise_before(scope, receive, send):
    raise RuntimeError("refused before accepting")


async def return_before(scope, receive, send):
    return


async def raise_after(scope, receive, send):
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": "hello"})
    raise RuntimeError("failed after accepting")


async def close_with(scope, receive, send):
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": "bye"})
    await send({"type": "websocket.close", "code": int(scope["path"].split("/")[2]), "reason": "done here"})
    message = await receive()
    assert message["type"] == "websocket.disconnect", message


async def returns(scope, receive, send):
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": "done"})


async def show_scope(scope, receive, send):
    await send({"type": "websocket.accept", "subprotocol": (scope["subprotocols"] or [None])[0]})
    shown = {key: scope[key] for key in ("type", "scheme", "path", "raw_path", "query_string", "subprotocols",
                                          "http_version", "client", "server", "state")}
    shown["raw_path"], shown["query_string"] = shown["raw_path"].decode(), shown["query_string"].decode()
    shown["headers"] = [[k.decode(), v.decode()] for k, v in scope["headers"]]
    shown["spec_version"] = scope["asgi"]["spec_version"]
    await send({"type": "websocket.send", "text": json.dumps(shown)})
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def with_headers(scope, receive, send):
    await send({"type": "websocket.accept", "headers": [(b"x-app", b"yes")]})
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def no_receive(scope, receive, send):
    await send({"type": "websocket.accept"})
    await asyncio.sleep(3600)


async def flood(scope, receive, send):
    query = parse_qs(scope["query_string"].decode())
    n, size = int(query["n"][0]), int(query["size"][0])
    await send({"type": "websocket.accept"})
    for index in range(n):
        await send({"type": "websocket.send", "bytes": bytes([index % 256]) * size})
    log.warning("flood sent %d", n)
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def linger(scope, receive, send):
    await send({"type": "websocket.accept"})
    while (await receive())["type"] != "websocket.disconnect":
        pass
    log.warning("%s still running", scope["path"].split("/")[2])
    await asyncio.sleep(3600)


async def crash(scope, receive, send):
    await send({"type": "websocket.accept"})
    await receive()
    os._exit(1)


async def concurrent(scope, receive, send):
    query = parse_qs(scope["query_string"].decode())
    n, size = int(query["n"][0]), int(query["size"][0])
    await send({"type": "websocket.accept"})
    await asyncio.gather(*(send({"type": "websocket.send", "bytes": bytes([index]) * size}) for index in range(n)))
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def accept_when(scope, receive, send):
    path = parse_qs(scope["query_string"].decode())["file"][0]
    log.warning("accept-when waiting")
    while not os.path.exists(path):
        await asyncio.sleep(0.01)
    await echo(scope, receive, send, "accept-when")


ROUTES = {"/echo": echo, "/echo-log/": echo_log, "/deny": deny, "/raise-before": raise_before,
          "/return-before": return_before, "/raise-after": raise_after, "/close/": close_with, "/returns": returns,
          "/scope": show_scope, "/headers": with_headers, "/no-receive": no_receive, "/flood": flood,
          "/linger/": linger, "/crash": crash, "/concurrent": concurrent, "/accept-when": accept_when}
