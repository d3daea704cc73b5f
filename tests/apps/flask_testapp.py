"""A Flask app for tests/test_flask.py: each route reports what Werkzeug parsed from the body.

Flask is a test tool here, never a dependency of minirr; this module is imported only in
the workers of servers that test_flask.py starts, after it has checked that Flask is there.
"""

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.post("/data")
def data():
    """The raw body as Werkzeug reads it, with the length it believes the body has."""
    body = request.get_data()
    return jsonify(length=len(body), body=body.decode("latin-1"), content_length=request.content_length)


@app.post("/form")
def form():
    return jsonify(form=request.form.to_dict(flat=False))


@app.post("/upload")
def upload():
    files = {name: {"filename": f.filename, "content": f.read().decode("latin-1")} for name, f in request.files.items()}
    return jsonify(files=files, form=request.form.to_dict(flat=False))


@app.post("/json")
def json_body():
    return jsonify(json=request.get_json())
