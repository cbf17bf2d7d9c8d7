"""Production launcher: ``python -m app`` serves ``app.main:create_app`` with Granian, configured by SPEC §9 (§12.4).

``python -m app --reload`` is the development server used by ``task dev``; it binds 127.0.0.1 unless RUN__HOST
says otherwise. This process only supervises: it imports the settings, not the application, so it stays small;
each worker builds the app itself (``app.main:create_app``, the factory the ``litestar`` CLI loads too; the CLI's
commands are only added when the CLI starts, so a worker never imports them). It logs the startup line once, for all
its workers, and gives them the directory where they share their Prometheus metrics (``metrics_directory``).
"""

from __future__ import annotations

import ctypes
import gc
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Only the settings at import: in production this process execs itself as `python -OO` once it has read them
# (`optimize_in_production`), and everything imported before that would be imported twice. Granian and the key
# check come after.
from app.core.settings import PROJECT_ROOT, Settings, SettingsError, exit_with, load_settings

APP_FACTORY = "app.main:create_app"
_ALL_INTERFACES = {"0.0.0.0", "::", ""}  # noqa: S104 - only compared with, to show a URL one can open
# prometheus_client's own variable (app.core.metrics); spelled here because importing prometheus_client in this
# process before the variable is set would leave forked workers in single-process mode.
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
_PRIVATE_PREFIX = "app-metrics-"  # + the supervisor's pid: a directory whose server is gone can be removed
_PR_SET_PDEATHSIG = 1  # prctl(2)


def main() -> None:
    settings = load_settings()
    reload = "--reload" in sys.argv[1:]
    optimize_in_production(settings, reload=reload)
    if settings.app.environment != "local":
        import_structlog_without_rich()
    from app.core.keys import load_signing_keys  # noqa: PLC0415 - after the exec of production (see the imports)

    try:
        load_signing_keys(settings.jwt)  # fail here, once, rather than in every Granian worker
    except SettingsError as exc:
        exit_with(exc)
    if sys.platform != "win32":
        stop_booting_workers_at_once()
    if sys.platform.startswith("linux"):
        end_workers_with_the_supervisor()
    with metrics_directory():
        serve(settings, reload=reload)


def optimize_in_production(settings: Settings, *, reload: bool) -> None:
    """Production serves as ``python -OO -m app``: this process, not yet serving, becomes that interpreter (same pid).

    ``-OO`` drops docstrings and asserts from every module's code: ~6 MiB less in each Granian worker, forked from
    this process. Nothing in production reads them: docstrings are only the API docs' operation descriptions, and
    production serves no docs (SPEC §8); no assert here or in the stack decides anything. ``task install``, ``task
    bytecode`` and the image compile the ``-OO`` bytecode too. A ``PYTHONOPTIMIZE`` set by the operator (also ``0``)
    is left as it is.
    """
    if settings.app.environment != "production" or reload:
        return
    if sys.flags.optimize >= 2 or "PYTHONOPTIMIZE" in os.environ:
        return
    flags = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]  # -X, -W, … as given
    os.execv(sys.executable, [sys.executable, *flags, "-OO", "-m", "app", *sys.argv[1:]])  # noqa: S606 - this interpreter


def import_structlog_without_rich() -> None:
    """structlog, without the rich it imports whenever rich is installed (Litestar's CLI needs it), along with pygments.

    structlog uses rich for the tracebacks of its ConsoleRenderer, which only the local environment renders logs with
    (app.core.logging); elsewhere it would be ~100 ms of import and ~5 MiB in this process and in every worker, forked
    from it. While structlog is imported, rich is marked as not installed (``None`` in ``sys.modules``, the import
    system's "not found"); the mark goes right after, so whatever imports rich later still gets it.
    """
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]
    try:
        import structlog  # noqa: F401, PLC0415
    finally:
        del sys.modules["rich"]


def stop_booting_workers_at_once() -> None:
    """A forked worker starts with the supervisor's signal handlers, which only set a flag in the supervisor: a
    SIGTERM sent while the worker booted was swallowed, and the supervisor waited the whole GRANIAN__TIMEOUT (900 s by
    default) before killing it. From the fork until Granian installs the worker's own handlers, SIGTERM ends a worker
    at once (it serves nothing yet); blocked across the fork itself, so one sent in between waits for that."""
    terminate = {signal.SIGTERM}

    def in_child() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, terminate)

    os.register_at_fork(
        before=lambda: signal.pthread_sigmask(signal.SIG_BLOCK, terminate),
        after_in_parent=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, terminate),
        after_in_child=in_child,
    )


def end_workers_with_the_supervisor() -> None:
    """A worker whose supervisor is gone (SIGKILL, the OOM killer) gets SIGTERM and stops like any other stop,
    instead of serving on, unsupervised, and keeping the port from a restarted server. Linux's parent-death signal,
    set in each forked worker. Granian forks its workers from this process's main thread only, whose end is the
    process's end (the signal follows the thread that forked)."""
    supervisor = os.getpid()
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def in_child() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != supervisor:  # gone already, before the signal was asked for
            os.kill(os.getpid(), signal.SIGTERM)

    os.register_at_fork(after_in_child=in_child)


def serve(settings: Settings, *, reload: bool) -> None:
    # Not at the top of the module: structlog must not be imported before `import_structlog_without_rich`.
    from granian import Granian  # noqa: PLC0415 - see the imports
    from granian.constants import Interfaces  # noqa: PLC0415

    from app.core.logging import configure_logging, log_startup  # noqa: PLC0415

    host = settings.server.bind_host(development=reload)
    server = Granian(
        APP_FACTORY,
        factory=True,
        interface=Interfaces.ASGI,
        address=host,
        port=settings.server.port,
        workers=1 if reload else settings.server.workers,
        # Time a worker gets to finish in-flight requests on shutdown/reload (GRANIAN__TIMEOUT).
        workers_kill_timeout=settings.server.timeout,
        respawn_failed_workers=not reload,
        **(_reload_options() if reload else {}),
    )
    # After Granian's own set-up (plain text on stdout), so its lines take the app's format (SPEC §11).
    configure_logging(settings)
    # Granian calls this once the socket is bound, before it spawns the workers.
    server.on_startup(lambda: log_startup(settings, url=_url(host, settings.server.port)))
    server.serve(target_loader=build_worker_app)


@contextmanager
def metrics_directory() -> Iterator[Path]:
    """The directory of prometheus_client's multiprocess mode, set in the environment the workers inherit: each
    worker writes its metrics there and a scrape adds up all files, whichever worker answers it.

    An operator's ``PROMETHEUS_MULTIPROC_DIR`` is used (created if missing) and emptied of an earlier run's files,
    which would otherwise count again; without one, a private directory lives exactly as long as this server.
    """
    given = os.environ.get(MULTIPROC_DIR)
    if given:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink(missing_ok=True)
        yield directory
        return
    _remove_orphaned_directories()
    directory = Path(tempfile.mkdtemp(prefix=f"{_PRIVATE_PREFIX}{os.getpid()}-"))
    os.environ[MULTIPROC_DIR] = str(directory)
    try:
        yield directory
    finally:
        os.environ.pop(MULTIPROC_DIR, None)
        shutil.rmtree(directory, ignore_errors=True)


def _remove_orphaned_directories() -> None:
    """Private directories of servers that were killed (SIGKILL, a crash) and so could not remove their own."""
    for orphan in Path(tempfile.gettempdir()).glob(f"{_PRIVATE_PREFIX}*-*"):
        pid = orphan.name.removeprefix(_PRIVATE_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(orphan, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def build_worker_app(_target: str) -> Any:
    """Runs in every Granian worker: the app, without a startup line of its own (the supervisor logged it)."""
    if sys.platform != "win32":
        stop_on_the_first_signal_only()
        # Ctrl+C in a terminal sends SIGINT to the whole process group. A worker that stops on it by itself can
        # exit before the supervisor has marked it as being stopped: Granian then logs "Unexpected exit from
        # worker-1" and exits with status 1 (and `task dev` reports a failure). So only the supervisor reacts to
        # SIGINT; it stops its workers with SIGTERM. Blocked rather than ignored: Granian installs its handlers
        # after this loader returns, and a handler does not lift a block.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    # Importing the stack and building the app leave ~130 000 tracked objects that all stay: the collector would walk
    # them again and again while they are made, for almost nothing to free (one collection at the end frees that).
    gc.disable()
    try:
        from app.main import create_app  # noqa: PLC0415 - the supervisor itself never imports the application

        app = create_app(announce=False)
        # What is alive now (the imported stack, the app) lives as long as the worker: out of the collector's sight,
        # a full collection no longer walks it. Those walks paused a busy worker for ~100 ms (W3 p99 105 -> 12 ms).
        gc.collect()
        gc.freeze()
    finally:
        gc.enable()
    return app


def stop_on_the_first_signal_only() -> None:
    """A worker acts on its first SIGTERM (or SIGINT) and ignores the next: one more would hang it for good.

    Granian's worker turns the signal into a stop event whose ``set()`` blocks while an earlier one is still waiting
    to be read, and only its server reads it, from the moment it serves. A worker that gets a second signal while
    its app starts (the lifespan: connecting, ``create_all``) then waits forever inside the first signal's handler,
    never serves and never exits, holding the port. Two signals are common: the parent-death signal
    (``end_workers_with_the_supervisor``) comes again each time the killed supervisor's next thread exits, and
    systemd signals every process of the service as well as the supervisor stopping its workers. Granian installs
    its handlers (``granian._signals.set_loop_signals``, looked up on each worker start) right after this loader
    returns; they are replaced by one that passes the first signal on. ``tests/test_serve.py`` checks it against the
    Granian in pdm.lock.
    """
    from granian import _signals  # noqa: PLC0415 - Granian's own module; only a worker needs it

    install: Callable[[Any], Any] | None = getattr(_signals, "set_loop_signals", None)
    if install is None:  # another Granian than the locked one: its own handlers stay, and the test says so
        return

    def install_once(loop: Any) -> Any:
        event = install(loop)
        stopping = False

        def stop() -> None:
            nonlocal stopping
            if not stopping:
                stopping = True
                event.set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop)
        return event

    _signals.set_loop_signals = install_once


def _url(host: str, port: int) -> str:
    if host in _ALL_INTERFACES:
        host = "localhost"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _reload_options() -> dict[str, Any]:
    # watchfiles is a development dependency (the `dev` group): production images do not have it.
    from watchfiles import PythonFilter  # noqa: PLC0415

    class SourceFilter(PythonFilter):
        """Only source changes restart the server: the log file and the embedded SQLite file live under src/ too."""

        def __init__(self) -> None:
            super().__init__(extra_extensions=(".env",))

    return {"reload": True, "reload_paths": [PROJECT_ROOT / "src"], "reload_filter": SourceFilter}


if __name__ == "__main__":
    main()
