"""HTTP/1.1 as bytes, with no I/O: the request parser and its parts, and the writers of answers.

    parser.py     RequestParser: bytes in, Request events out (RFC 9112), one state table
    sections.py   the head's size limits, checked as bytes arrive
    chunked.py    a chunked body's own state machine
    grammar.py    the grammar as regexes, and the checks built on them
    responses.py  answers as bytes: status line, headers, framing, errors, dates
    forwarded.py  who the client is behind a trusted proxy

Nothing here touches a socket, a clock or a process: the master feeds bytes in and
writes out what comes back.
"""
