"""The app behind wire-protocol.md's worked examples, for `python -m minirr.worker hello_app:app`."""

from minirr import Response


def app(request):
    if request.path == "/raise":
        raise RuntimeError("boom")
    if request.path == "/print":
        print("a print() in the app")        # must reach stderr, never the frame channel
    return Response(200, {}, "Hello")
