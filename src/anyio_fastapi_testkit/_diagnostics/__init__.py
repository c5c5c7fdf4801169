"""What the kit watches while tests run, and how it reports it: time limits on the real
clock, leaked tasks, a blocked loop, queries, Ctrl-C, the frames and explanations of errors.

Used by the rooms that run tests (``_isolation``, ``_http``) and by ``_provisioning`` (the
schema build is not counted as the test's queries); imports only ``_core``.
"""
