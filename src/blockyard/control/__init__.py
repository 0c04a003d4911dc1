"""The control API: HTTP+JSON over a unix socket (and optionally TCP with a token).

* ``http`` -- a small asyncio HTTP/1.1 server (one request per connection);
* ``api`` -- the route table: a path to an operation of
  ``media.operations`` or to a live view (sessions, exports, metrics);
* ``metrics`` -- the Prometheus text rendering.
"""
