"""The PEP 3333 adapter, checked by wsgiref.validate."""

import wsgiref.validate

from minirr.wire.messages import Request
from minirr.worker.wsgi import WSGIHandler, build_environ


def simple_app(environ, start_response):
    body = f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}?{environ['QUERY_STRING']} " \
           f"{environ['wsgi.input'].read(int(environ['CONTENT_LENGTH'] or 0)).decode()} {environ.get('HTTP_X_TEST')}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def request(**kw):
    base = dict(method="POST", path="/caf%C3%A9", query="a=1", headers=[("Host", "h:8080"), ("X-Test", "1"),
                ("X-Test", "2"), ("Content-Type", "text/plain"), ("Content-Length", "3")], body=b"abc",
                remote_addr="127.0.0.1", protocol="HTTP/1.1", uri="http://h:8080/caf%C3%A9?a=1")
    base.update(kw)
    return Request(**base)


def body_of(response):
    """The body as the worker sends it: a whole one as it is; a streamed one read to its
    end, then closed."""
    if isinstance(response.body, bytes):
        return response.body
    try:
        return b"".join(response.body)
    finally:
        response.body.close()


def test_validator_finds_nothing_to_complain_about():
    handler = WSGIHandler(wsgiref.validate.validator(simple_app))
    response = handler(request())
    assert response.status == 200
    assert body_of(response) == "POST /cafÃ©?a=1 abc 1,2".encode()


def test_environ_fields():
    env = build_environ(request())
    assert env["SERVER_NAME"] == "h" and env["SERVER_PORT"] == "8080"
    assert env["CONTENT_TYPE"] == "text/plain" and env["CONTENT_LENGTH"] == "3"
    assert env["wsgi.url_scheme"] == "http" and env["REMOTE_ADDR"] == "127.0.0.1"
    assert "HTTP_CONTENT_TYPE" not in env


def test_fields_whose_name_has_an_underscore_are_dropped():
    """`X_Auth_User` must not pass for `X-Auth-User` (a proxy may strip or set only the
    dash spelling), nor `Content_Type` overwrite CONTENT_TYPE."""
    env = build_environ(request(headers=[("X_Auth_User", "admin"), ("X-Forwarded-For", "10.0.0.1"),
                                         ("X_Forwarded_For", "1.2.3.4"), ("Content-Type", "text/plain"),
                                         ("Content_Type", "evil/type"), ("Content_Length", "99")]))
    assert "HTTP_X_AUTH_USER" not in env
    assert env["HTTP_X_FORWARDED_FOR"] == "10.0.0.1"
    assert env["CONTENT_TYPE"] == "text/plain" and env["CONTENT_LENGTH"] == "3"
    assert not [key for key in env if "AUTH" in key or "99" in str(env[key])]


def test_close_is_called_and_write_callable_works():
    closed = []

    class Body:
        def __iter__(self):
            return iter([b"b"])

        def close(self):
            closed.append(True)

    def app(environ, start_response):
        write = start_response("201 Created", [])
        write(b"a")
        return Body()

    response = WSGIHandler(app)(request())
    assert (response.status, body_of(response), closed) == (201, b"ab", [True])


def testscheme_host_port():
    from minirr.worker.wsgi import scheme_host_port
    assert scheme_host_port("https://example.com:8443/x") == ("https", "example.com", "8443")
    assert scheme_host_port("https://example.com/x") == ("https", "example.com", "443")
    assert scheme_host_port("http://[::1]:8080/") == ("http", "::1", "8080")
    assert scheme_host_port("http://h?q") == ("http", "h", "80")
    assert scheme_host_port("*") == ("http", "localhost", "80")


# --- the body as the app gets it: de-chunked, whole, its length known ---------------------

def test_chunked_request_is_described_as_the_body_the_app_gets():
    env = build_environ(request(headers=[("Host", "h"), ("Transfer-Encoding", "chunked")], body=b"abc"))
    assert env["CONTENT_LENGTH"] == "3"
    assert "HTTP_TRANSFER_ENCODING" not in env
    assert env["wsgi.input_terminated"] is True
    assert env["wsgi.input"].read() == b"abc"


def test_content_length_comes_from_the_body_not_the_header():
    env = build_environ(request(headers=[("Host", "h"), ("Content-Length", "99")], body=b"abcd"))
    assert env["CONTENT_LENGTH"] == "4" and "HTTP_CONTENT_LENGTH" not in env


def test_no_body_gives_an_empty_content_length():
    for headers in ([("Host", "h")], [("Host", "h"), ("Content-Length", "0")]):
        env = build_environ(request(method="GET", headers=headers, body=b""))
        assert env["CONTENT_LENGTH"] == ""
        assert env["wsgi.input_terminated"] is True and env["wsgi.input"].read() == b""



def test_without_a_stream_blocks_written_during_iteration_keep_their_place():
    def app(environ, start_response):
        write = start_response("200 OK", [])
        write(b"a")
        yield b"b"
        write(b"c")
        yield b""
        yield b"d"
        write(b"e")

    assert body_of(WSGIHandler(app)(request())) == b"abcde"


def test_a_list_after_write_without_a_stream_is_joined_after_the_written_blocks():
    def app(environ, start_response):
        start_response("200 OK", [])(b"a")
        return [b"b", b"", b"c"]

    response = WSGIHandler(app)(request())
    assert response.body == b"abc"
