from fastrnn._threaded_interpreter import JOIN_TIMEOUT_S, threaded_programs  # noqa: F401  (re-exported for the tests)
