"""The Virtual Media Manager: every known medium, controller and attachment.

* ``model`` -- plain dataclasses (``Medium``, ``Controller``, ``Attachment``)
  and the vocabularies (kinds, write modes, controller slot counts);
* ``db`` / ``schema`` -- the SQLite file: WAL, foreign keys, ``user_version``
  migrations, ``BEGIN IMMEDIATE`` transactions retried on a busy database;
* ``registry`` -- the SQL: rows in, dataclasses out, nothing else;
* ``builder`` -- the one place that turns a medium into a layer stack;
* ``clone`` / ``files`` -- copying a visible disk sparsely, moving image files;
* ``ops`` / ``attach_ops`` -- the operations the CLI and the control API
  offer, each ``async def op(ctx, **params) -> JSON-able``, run either inside
  the daemon (``ctx.live`` set) or by the CLI on the database directly.
"""
