"""Per-test isolation: the outer transaction, sessions on it, the leak check, factories.

Read top to bottom, each module importing only those above it:

* ``script``: the one-round-trip libpq script that ends a test (``ROLLBACK; BEGIN`` and the
  leak check's count), keeping psycopg's prepared statements;
* ``database``: the engine and the one connection the tests share (``SharedConnection``);
* ``request_sessions``: the app's requests' sessions, closed as production would;
* ``transaction``: one test's transaction and session, and its end;
* ``dependency``: the override of the app's session dependency (``AsyncDatabase``);
* ``sync``: the sync variant (``db_session_sync``), its own connection per test;
* ``sessionmaker``: the app's sessionmaker bound to the test's transaction;
* ``leaks``: the leak check; ``factories``: the polyfactory bindings.
"""
