"""A WSGI app that does nothing: served by the bridge's own gunicorn config, it is the
ceiling any beat endpoint under gunicorn can reach on this machine (`gunicorn-floor`)."""

_BODY = b'{"server_id":"srv-0","received_at":1800000000.0,"interval":30.0}'


def app(environ, start_response):
    environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(_BODY)))])
    return [_BODY]
