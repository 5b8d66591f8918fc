"""``emlive serve``: one process runs the API and dashboard, the controller and the notifications.

- **Database**: ``database_url``, default SQLite at ``<data_root>/.emlive/emlive.sqlite3``;
  migrations are applied at start.
- **Secret key** (signs login cookies): ``[web] secret_key``, else one generated at the first
  start into ``<data_root>/.emlive/secret_key`` (mode 0600) and reused, so logins survive
  restarts.
- **Web**: uvicorn serves :mod:`emlive.web.asgi` on ``[web] host``/``port``.
- **Controller** (a thread): runs every session whose state is ``processing`` on one Dask
  cluster, following the database: a session started or resumed through the API is picked up,
  one stopped is dropped once its exposures in flight finish. After a restart the sessions still
  in state ``processing`` are picked up again; exposures left in flight are redone and results
  already on disk are stored without recomputing (see :mod:`emlive.runtime.loop`).
- **Notifications** (a thread): every few seconds, :mod:`emlive.web.notify` looks at the sessions
  being processed and posts to ``[web] webhook_url`` when one stalls, fails repeatedly or
  completes (a complete session's state becomes ``complete``; the controller looks at complete
  sessions' folders every minute and processes one again when a movie is written to it).
- **Shutdown**: the first SIGTERM/SIGINT stops accepting requests and lets the controller finish
  the exposures in flight, then the process exits 0; a second one leaves them for the next start.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from emlive.config import Settings
from emlive.db.setup import configure_django, redact_url, setup_database, sqlite_url
from emlive.pipeline.exposure import PipelineParams
from emlive.pipeline.params import pipeline_params as planned_params
from emlive.runtime.loop import StopSignals
from emlive.runtime.cluster import import_batch_system
from emlive.web import notify

if TYPE_CHECKING:  # Django models can be imported only once the database is set up
    import uvicorn

    from emlive.db.models import Session

log = logging.getLogger(__name__)

STATE_DIR_NAME = ".emlive"
"""The service's own folder in the data root: the default SQLite database and the secret key."""

_NOTIFY_MAX_INTERVAL_S = 15.0


class ServiceError(RuntimeError):
    """The service cannot start (its message says what to fix)."""


def data_root(settings: Settings) -> Path:
    """The facility root, absolute; raises :class:`ServiceError` when it is not a folder."""
    root = settings.data_root.expanduser().resolve()
    if not root.is_dir():
        raise ServiceError(
            f"data root {root} is not a folder: create it, or set data_root in the configuration "
            "(EMLIVE_DATA_ROOT) to the folder holding <project>/sessions/<user>/<session>/raw/"
        )
    return root


def state_dir(settings: Settings) -> Path:
    """``<data_root>/.emlive`` (made on first use, readable by the service's user only)."""
    folder = data_root(settings) / STATE_DIR_NAME
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def database_url(settings: Settings) -> str:
    """``database_url``, default SQLite at ``<data_root>/.emlive/emlive.sqlite3``."""
    return settings.database_url or sqlite_url(state_dir(settings) / "emlive.sqlite3")


def secret_key(settings: Settings) -> str:
    """``[web] secret_key``, else the one kept in ``<data_root>/.emlive/secret_key``, generated
    (mode 0600) by whichever process needs it first."""
    if settings.web.secret_key:
        return settings.web.secret_key
    path = state_dir(settings) / "secret_key"
    if not path.exists():
        tmp = path.with_name(f".secret_key.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(50) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(tmp, path)  # never replaces a key another process wrote meanwhile
                log.info("generated the secret key that signs login cookies: %s", path)
            except FileExistsError:
                pass
        finally:
            tmp.unlink(missing_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s is readable by others (mode %o): chmod 600 it", path, mode)
    key = path.read_text().strip()
    if len(key) < 32:
        raise ServiceError(f"{path}: the secret key is empty or too short; delete the file to generate a new one")
    return key


def open_database(settings: Settings, *, migrate: bool = True, sign_logins: bool = True) -> str:
    """Configure Django for the service's database (and migrate it); with ``sign_logins``, with
    the service's secret key (else a random one: for commands that serve no logins). Returns the
    database URL; a database that cannot be reached is a :class:`ServiceError`."""
    url = database_url(settings)
    key = secret_key(settings) if sign_logins else None
    try:
        if migrate:
            setup_database(url, secret_key=key)
        else:
            configure_django(url, secret_key=key)
    except ValueError:
        raise
    except Exception as err:
        from django.db import DatabaseError

        if isinstance(err, DatabaseError):
            raise ServiceError(f"cannot use the database {redact_url(url)}: {err}".strip()) from err
        raise
    from emlive.web import options

    options.apply(settings.web)
    return url


def pipeline_params(session: Session, settings: Settings) -> PipelineParams:
    """What shapes a session's results: its acquisition, the steps, and each step's configured
    parameters with the session's own overrides (``params_json``, e.g. ``{"motion":
    {"bin_factor": 2}, "pick": {"diameter_a": 150}}``; ``"steps"`` chooses the steps).

    Raises ValueError naming a bad or unknown override, an unknown step or a missing dependency.
    """
    overrides = dict(session.params_json or {})
    steps = overrides.pop("steps", None)
    try:
        return planned_params(session.acquisition, settings, overrides, steps=steps)
    except ValueError as err:
        raise ValueError(f"session {session}: {err}") from None


def notify_interval_s(settings: Settings) -> float:
    """How often sessions are checked: often enough to honour the shortest alert delay."""
    web = settings.web
    return max(0.5, min(_NOTIFY_MAX_INTERVAL_S, web.stall_after_s / 4, web.complete_after_s / 4))


def check_sessions(notifier: notify.Notifier, settings: Settings, *, now_s: float | None = None) -> list[notify.Alert]:
    """One notification round: read the sessions being processed, decide, mark complete ones,
    log every alert and post it to the webhook (if one is configured). Returns the alerts."""
    snaps = notify.snapshots(failures_to_alert=notifier.rules.failures_to_alert)
    alerts = notify.decide_all(notifier, snaps, now_s=time.time() if now_s is None else now_s)
    cycles = {snap.session_id: snap.cycle_started_s for snap in snaps}
    for alert in alerts:
        if alert.mark_complete and not notify.mark_complete(alert.session_id, cycle_started_s=cycles[alert.session_id]):
            continue  # stopped or resumed meanwhile: no longer true
        log.info("%s", alert.text)
        if settings.web.webhook_url:
            notify.send(settings.web.webhook_url, alert.text)
    return alerts


def rules(settings: Settings) -> notify.Rules:
    web = settings.web
    return notify.Rules(
        stall_after_s=web.stall_after_s, failures_to_alert=web.failures_to_alert, complete_after_s=web.complete_after_s
    )


class Service:
    """The ``emlive serve`` process: :meth:`run` blocks until shut down and returns the exit code."""

    def __init__(
        self, settings: Settings, *, run_controller: Callable[[Settings, StopSignals, Callable[[], None]], None] | None = None
    ):
        self.settings = settings
        self.signals = StopSignals(threading.Event(), threading.Event())
        self.controller_ready = threading.Event()
        self._run_controller = run_controller or follow_sessions
        self._server: uvicorn.Server | None = None
        self.failed: BaseException | None = None

    def run(self) -> int:
        import uvicorn

        settings = self.settings
        root = data_root(settings)
        url = open_database(settings)
        log.info("data root %s; database %s", root, redact_url(url))
        from emlive.web.api import set_data_root
        from emlive.web.asgi import application

        set_data_root(root)

        web = settings.web
        config = uvicorn.Config(
            application, host=web.host, port=web.port, lifespan="off", log_config=None, proxy_headers=True,
            server_header=False,
        )
        server = _server(config)
        self._server = server
        import_batch_system(settings.cluster)  # here, in the main thread: the controller's opens the cluster
        threads = [
            threading.Thread(target=self._controller, name="emlive-controller", daemon=True),
            threading.Thread(target=self._notifications, name="emlive-notify", daemon=True),
        ]
        with _listen(web.host, web.port) as sock, self._signal_handlers(server):
            host, port = sock.getsockname()[:2]
            log.info("listening on http://%s:%d: the API (/api/v1/), the dashboard (/dashboard/) and the "
                     "compatible routes (/{project}/{user}/sessions …)", _url_host(host), port)
            for thread in threads:
                thread.start()
            server.run(sockets=[sock])
            self.signals.stop.set()  # the server stopped for a reason of its own: stop the rest
            for thread in threads:
                thread.join()
        if self.failed is not None:
            return 1
        log.info("stopped cleanly")
        return 0

    @contextmanager
    def _signal_handlers(self, server: uvicorn.Server) -> Iterator[None]:
        """SIGTERM/SIGINT once: stop serving, finish exposures in flight; twice: leave them."""

        def handler(signum: int, _frame: object) -> None:
            name = signal.Signals(signum).name
            if self.signals.stop.is_set():
                log.warning("second %s: leaving exposures in flight to be processed at the next start", name)
                self.signals.abandon.set()
                server.force_exit = True
            else:
                log.warning("%s: shutting down, finishing exposures in flight (signal again to leave them)", name)
                self.signals.stop.set()
            server.should_exit = True

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def _fail(self, what: str, err: BaseException) -> None:
        log.error("%s stopped: %s: %s; shutting the service down", what, type(err).__name__, err, exc_info=err)
        self.failed = err
        self.signals.stop.set()
        if self._server is not None:
            self._server.should_exit = True

    def _controller(self) -> None:
        from django.db import connections

        try:
            self._run_controller(self.settings, self.signals, self.controller_ready.set)
            if not self.signals.stop.is_set():
                raise RuntimeError("the controller returned without being asked to stop")
        except BaseException as err:  # noqa: BLE001 (reported, and the service stops with exit code 1)
            self._fail("the controller", err)
        finally:
            connections.close_all()

    def _notifications(self) -> None:
        from django.db import DatabaseError, close_old_connections, connections

        interval_s = notify_interval_s(self.settings)
        try:
            while not self.controller_ready.wait(0.2):  # time before is nobody's fault
                if self.signals.stop.is_set():
                    return
            notifier = notify.Notifier(rules(self.settings), watching_since_s=time.time())
            while not self.signals.stop.wait(interval_s):
                close_old_connections()
                try:
                    check_sessions(notifier, self.settings)
                except DatabaseError as err:  # the database restarting: try again next round
                    log.warning("notifications: cannot read the database (%s); retrying", err)
        except BaseException as err:  # noqa: BLE001
            self._fail("notifications", err)
        finally:
            connections.close_all()


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free one); bound before anything else
    starts, so a taken port is one clear error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as err:
        raise ServiceError(
            f"cannot listen on {host}:{port}: {err.strerror or err}; choose another port or host "
            "(--port, --host; web.port, web.host) or stop what uses it"
        ) from None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _server(config: uvicorn.Config) -> uvicorn.Server:
    """uvicorn's server, leaving signals to :class:`Service`: uvicorn's own handlers re-raise
    the signal after its shutdown, which would end the process before the controller finishes."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return Server(config)


def sessions_to_process(settings: Settings) -> list[tuple[Session, PipelineParams]]:
    """Every session in state ``processing``, with its parameters (the controller's ``follow``).

    A session whose stored parameter overrides are not valid is not processed: its state becomes
    ``failed`` (the compatible status says ``processing_failure``) and the reason is logged;
    starting it again with good parameters takes it up.
    """
    from emlive.db.models import Session

    chosen = []
    for session in Session.objects.select_related("project").filter(state=Session.State.PROCESSING):
        try:
            chosen.append((session, pipeline_params(session, settings)))
        except ValueError as err:
            log.error("%s cannot be processed, its parameters are not valid: %s", session, err)
            Session.objects.filter(pk=session.pk, state=Session.State.PROCESSING).update(state=Session.State.FAILED)
    return chosen


REOPEN_CHECK_S = 60.0
"""How often sessions marked complete are looked at for movies written since, seconds."""

REOPEN_WITHIN_S = 2 * 24 * 3600.0
"""Sessions marked complete longer ago than this are left alone (their folders are not scanned)."""


def reopen_written_sessions(*, now_s: float | None = None) -> list[Session]:
    """Sessions of the facility layout marked complete within :data:`REOPEN_WITHIN_S` whose
    ``raw/`` tree was written since (a folder's mtime changes when a file is added to it): back
    to ``processing``, so a pause in collection longer than ``complete_after_s`` never leaves
    the movies after it unwatched. Returns the sessions reopened."""
    from datetime import UTC, datetime

    from django.utils import timezone

    from emlive.db.models import Session

    now_s = time.time() if now_s is None else now_s
    since = datetime.fromtimestamp(now_s - REOPEN_WITHIN_S, UTC)
    reopened = []
    for session in Session.objects.select_related("project").filter(
        state=Session.State.COMPLETE, updated_at__gte=since
    ).exclude(owner=""):
        if _tree_written_since(Path(session.raw_dir), session.updated_at.timestamp()):
            marked = Session.objects.filter(pk=session.pk, state=Session.State.COMPLETE, updated_at=session.updated_at)
            if marked.update(state=Session.State.PROCESSING, updated_at=timezone.now()):
                log.info("%s: new movies after it was marked complete; processing it again", session)
                reopened.append(session)
    return reopened


def _tree_written_since(folder: Path, since_s: float) -> bool:
    """Whether ``folder`` or a folder below it was changed (a file added, renamed or removed)
    after ``since_s`` (seconds since the epoch); False when it cannot be read."""
    for dirpath, _dirs, _files in os.walk(folder):
        try:
            if os.stat(dirpath).st_mtime > since_s:
                return True
        except OSError:
            continue
    return False


def follow_sessions(settings: Settings, signals: StopSignals, ready: Callable[[], None] = lambda: None) -> None:
    """The controller: process every session in state ``processing`` on one Dask cluster until
    ``signals`` stop it, taking up sessions started or resumed and letting go of those stopped
    or complete (after their exposures in flight are stored). ``ready()`` is called once the
    cluster is up, just before the sessions are taken up."""
    from emlive.runtime.cluster import open_cluster
    from emlive.runtime.loop import run_sessions

    with open_cluster(settings.cluster) as cluster:
        log.info("controller ready (%s Dask cluster); following the sessions in state processing", settings.cluster.kind)
        ready()
        next_reopen_s = 0.0

        def follow() -> list[tuple[Session, PipelineParams]]:
            nonlocal next_reopen_s
            if time.monotonic() >= next_reopen_s:
                next_reopen_s = time.monotonic() + REOPEN_CHECK_S
                reopen_written_sessions()
            return sessions_to_process(settings)

        run_sessions([], settings, watch=True, signals=signals, cluster=cluster, follow=follow)
