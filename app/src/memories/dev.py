"""Entry point of the server in the dev stack: the service, restarted in-process on SIGHUP.

`cargo xtask dev --watch` copies changed sources into the running container and sends this
process SIGHUP; it then stops the app and starts it again from the new sources. There is no new
container and no new interpreter: this process imports the app's dependencies (FastAPI,
pydantic, psycopg, uvicorn) once, and each app runs in a forked child that imports the
`memories` modules afresh. A restart costs the app's own start-up, not Python's.

- SIGHUP: stop the app (SIGTERM, then SIGKILL after `STOP_TIMEOUT` seconds), start a new one.
- SIGTERM or SIGINT: stop the app the same way and exit with its status.
- The first app exits by itself (a bad setting, no database): exit with its status, as the
  plain entry point would, so that a failed start is seen at once.
- A restarted app exits by itself (a broken edit): stay, and start again at the next SIGHUP;
  the container stays up (unhealthy) so that the next good edit recovers without a new one.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import time

STOP_TIMEOUT = 5.0
APP_PACKAGE = "memories"


def say(message: str) -> None:
    print(f"memories.dev: {message}", file=sys.stderr, flush=True)


def preload() -> None:
    """Imports the app once, for its dependencies, then forgets the app's own modules, so that
    every child imports them from the files as they are now. Best effort: a broken source file
    only costs the children the time to import what it would have loaded."""
    try:
        importlib.import_module(f"{APP_PACKAGE}.api")
        importlib.import_module(f"{APP_PACKAGE}.db")
    except Exception as err:
        say(f"cannot preload the app ({type(err).__name__}); starting it anyway")
    for name in [n for n in sys.modules if n == APP_PACKAGE or n.startswith(f"{APP_PACKAGE}.")]:
        del sys.modules[name]
    importlib.invalidate_caches()


def start() -> int:
    pid = os.fork()
    if pid == 0:
        for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        code = 1
        try:
            importlib.invalidate_caches()
            code = importlib.import_module(f"{APP_PACKAGE}.__main__").main()
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid


def status_of(wait_status: int) -> int:
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.WEXITSTATUS(wait_status)


def stop(pid: int) -> int:
    """Stops the app: SIGTERM, then SIGKILL if it has not exited within `STOP_TIMEOUT`."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + STOP_TIMEOUT
    while True:
        done, wait_status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status_of(wait_status)
        if time.monotonic() >= deadline:
            say(f"the app did not stop within {STOP_TIMEOUT:g}s; killing it")
            os.kill(pid, signal.SIGKILL)
            return status_of(os.waitpid(pid, 0)[1])
        time.sleep(0.01)


def main() -> int:
    wanted = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
    # Signals are taken one at a time with sigwait, never in a handler.
    signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
    preload()
    pid: int | None = start()
    restarted = False
    while True:
        signum = signal.sigwait(wanted)
        if signum == signal.SIGCHLD:
            if pid is None:
                continue
            done, wait_status = os.waitpid(pid, os.WNOHANG)
            if not done:
                continue
            code = status_of(wait_status)
            pid = None
            if not restarted:
                return code
            say(f"the app exited with status {code}; waiting for the next change (SIGHUP)")
        elif signum == signal.SIGHUP:
            if pid is not None:
                stop(pid)
            restarted = True
            say("restarting the app")
            pid = start()
        else:
            return stop(pid) if pid is not None else 0


if __name__ == "__main__":
    sys.exit(main())
