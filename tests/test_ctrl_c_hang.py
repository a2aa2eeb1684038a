"""The CI run that hung in the Ctrl-C test, reproduced as a mechanism (issue #22).

The Ctrl-C tests once started their child with `Popen(preexec_fn=...)` from a pytest-xdist worker, which
runs other threads (execnet's, torch's). fork copies a lock another thread holds into the child, where
no thread will ever release it; if preexec_fn (Python code between fork and exec) needs that lock, the
child never reaches exec, and Popen waits for the exec with no timeout: the parent hangs too, and no
test timeout inside it fires. Here a thread holds a lock the preexec_fn needs, in a parent of its own
(so this test cannot hang the suite): Popen never returns. The same parent starting the child the way
the Ctrl-C tests now do (tests/conftest.py interruptible_cli: SIGINT restored after exec, no preexec_fn)
returns at once. tests/test_architecture.py keeps preexec_fn out of the code."""
from __future__ import annotations

import subprocess
import sys
import textwrap

PARENT = textwrap.dedent("""
    import subprocess, sys, threading, time
    lock = threading.Lock()
    held = threading.Event()

    def busy_thread():  # stands in for execnet's or torch's threads, which hold locks now and then
        with lock:
            held.set()
            time.sleep(60)

    threading.Thread(target=busy_thread, daemon=True).start()
    held.wait()

    def needs_the_lock():  # in the forked child the lock is held by a thread that does not exist there
        with lock:
            pass

    argv = [sys.executable, "-c", "pass"]
    if sys.argv[1] == "preexec_fn":
        subprocess.Popen(argv, preexec_fn=needs_the_lock).wait()
    else:
        subprocess.Popen([sys.executable, "-c", "import signal; signal.signal(signal.SIGINT, "
                          "signal.default_int_handler)"]).wait()
    print("started")
""")


def run_parent(how: str, timeout: float) -> str:
    try:
        done = subprocess.run([sys.executable, "-c", PARENT, how], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "hung"
    return done.stdout.strip()


def test_preexec_fn_in_a_threaded_parent_hangs_and_the_exec_side_restore_does_not():
    assert run_parent("preexec_fn", timeout=5) == "hung"
    assert run_parent("restore after exec", timeout=30) == "started"
