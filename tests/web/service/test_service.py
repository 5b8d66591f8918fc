"""The service's pieces in one process: its folder, database and secret key, a session's
parameters, and a notification round against the database and a real webhook."""

from __future__ import annotations

import os
import signal
import socket
import stat
import time

import pytest

from emlive.acquisition import Acquisition
from emlive.config import Settings
from emlive.db.setup import sqlite_url
from emlive.web import service

ACQ = Acquisition(pixel_size_a=0.83, dose_per_frame_e_a2=1.0, voltage_kv=300.0)


def settings(root, **values) -> Settings:
    return Settings(data_root=root, database_url=None, **values)


def test_the_secret_key_is_generated_once_private_and_reused(tmp_path):
    first = service.secret_key(settings(tmp_path))
    path = tmp_path / ".emlive" / "secret_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(first) >= 50 and service.secret_key(settings(tmp_path)) == first
    assert [p.name for p in path.parent.iterdir()] == ["secret_key"]  # no temporary file left
    assert service.secret_key(settings(tmp_path, web={"secret_key": "k" * 40})) == "k" * 40


def test_the_database_defaults_to_sqlite_in_the_data_root_and_a_missing_root_is_a_clear_error(tmp_path):
    assert service.database_url(settings(tmp_path)) == sqlite_url(tmp_path / ".emlive" / "emlive.sqlite3")
    given = "postgresql://emlive@db.example/emlive"
    assert service.database_url(Settings(data_root=tmp_path, database_url=given)) == given
    with pytest.raises(service.ServiceError, match="nowhere is not a folder.*EMLIVE_DATA_ROOT"):
        service.database_url(settings(tmp_path / "nowhere"))


def start(root, session="grid1", movies=(), params=None):
    from emlive.web import control

    raw = root / "p1" / "sessions" / "ann" / session / "raw"
    raw.mkdir(parents=True)
    for name in movies:
        (raw / name).write_bytes(b"x")
    return control.start_processing(root, "p1", "ann", session, ACQ, params=params)


def test_a_sessions_parameters_are_the_configured_ones_with_its_overrides(db, tmp_path):
    configured = settings(tmp_path, motion={"patches": (3, 3)}, ctf={"max_res_a": 4.0})
    session = start(tmp_path, params={"motion": {"bin_factor": 2}})
    params = service.pipeline_params(session, configured)
    assert params.acquisition == ACQ
    assert list(params.steps) == ["motion", "ctf", "thumbnail"]
    motion, ctf = params.steps["motion"], params.steps["ctf"]
    assert motion.bin_factor == 2 and tuple(motion.patches) == (3, 3)
    assert ctf.max_res_a == 4.0
    session.params_json = {"motion": {"bin_factor": 2}, "pick": {"diameter_a": 150.0}}  # picking on, with its diameter
    params = service.pipeline_params(session, configured)
    assert list(params.steps) == ["motion", "ctf", "thumbnail", "pick"] and params.steps["pick"].diameter_a == 150.0
    session.params_json = {"motion": {"bin_factor": -1}}
    with pytest.raises(ValueError, match="bin_factor"):
        service.pipeline_params(session, configured)
    session.params_json = {"gain": {}}
    with pytest.raises(ValueError, match="parameters given for unknown steps gain"):
        service.pipeline_params(session, configured)
    session.params_json = {"steps": ["motion", "pick"]}
    with pytest.raises(ValueError, match="must include ctf"):
        service.pipeline_params(session, configured)


def test_a_notification_round_alerts_marks_complete_and_posts_to_the_webhook(db, tmp_path, hook, caplog):
    caplog.set_level("INFO", logger="emlive.web.service")
    configured = settings(
        tmp_path, web={"webhook_url": hook.url, "failures_to_alert": 2, "stall_after_s": 60, "complete_after_s": 120}
    )
    notifier = service.notify.Notifier(service.rules(configured))
    session = start(tmp_path, movies=("a.tif", "b.tif", "c.tif"))
    other = start(tmp_path, session="grid2")
    ids = [db.store.record_exposure(session, name, 1, 1)[0].pk for name in ("a.tif", "b.tif", "c.tif")]
    now = time.time()
    assert service.check_sessions(notifier, configured, now_s=now) == []

    db.store.mark_failed(ids[0], "a.tif: truncated")
    db.store.mark_failed(ids[1], "b.tif: truncated")
    alerts = service.check_sessions(notifier, configured, now_s=now + 30)
    assert [a.kind for a in alerts] == ["failing"]  # a failure is a result: not stalled
    assert service.check_sessions(notifier, configured, now_s=now + 31) == []
    alerts = service.check_sessions(notifier, configured, now_s=now + 125)
    assert [a.kind for a in alerts] == ["stalled"]  # c.tif waits, nothing finished for 60 s

    db.store.mark_failed(ids[2], "c.tif: truncated")
    alerts = service.check_sessions(notifier, configured, now_s=time.time() + 121)
    assert [a.kind for a in alerts] == ["complete"]
    session.refresh_from_db()
    other.refresh_from_db()
    assert (session.state, other.state) == ("complete", "processing")  # grid2 has no movie yet
    assert service.check_sessions(notifier, configured, now_s=time.time() + 1000) == []

    texts = [body["text"] for body in hook.bodies]
    assert len(texts) == 3 and all("p1/ann/grid1" in text for text in texts)
    assert "last 2 exposures failed" in texts[0] and "b.tif: truncated" in texts[0]
    assert "stalled" in texts[1] and "complete" in texts[2]
    assert [r.getMessage() for r in caplog.records] == texts


def test_a_session_resumed_meanwhile_is_not_marked_complete(db, tmp_path):
    from emlive.web import control, notify

    session = start(tmp_path, movies=("a.tif",))
    cycle_s = session.cycle_started_at.timestamp()
    control.stop_processing(session)
    control.resume_processing(session)
    assert not notify.mark_complete(session.pk, cycle_started_s=cycle_s)
    session.refresh_from_db()
    assert session.state == "processing"
    assert notify.mark_complete(session.pk, cycle_started_s=session.cycle_started_at.timestamp())


def _service_settings(db, tmp_path, **web) -> Settings:
    return Settings(data_root=tmp_path, database_url=db.url, web={"host": "127.0.0.1", "port": 0, **web})


def test_sigterm_lets_the_controller_finish_and_a_second_signal_abandons(db, tmp_path, caplog):
    caplog.set_level("INFO", logger="emlive.web.service")
    seen: list[str] = []

    def controller(settings, signals, ready):
        ready()
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.stop.wait(10)
        seen.append("stop")
        os.kill(os.getpid(), signal.SIGINT)
        assert signals.abandon.wait(10)
        seen.append("abandon")

    previous = signal.getsignal(signal.SIGTERM)
    assert service.Service(_service_settings(db, tmp_path), run_controller=controller).run() == 0
    assert seen == ["stop", "abandon"] and signal.getsignal(signal.SIGTERM) is previous
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert "listening on http://127.0.0.1:" in messages and "stopped cleanly" in messages


def test_a_failing_controller_stops_the_service_with_exit_code_1(db, tmp_path, caplog):
    def controller(settings, signals, ready):
        raise RuntimeError("no workers could start")

    assert service.Service(_service_settings(db, tmp_path), run_controller=controller).run() == 1
    assert "the controller stopped: RuntimeError: no workers could start" in caplog.text


def test_a_taken_port_is_a_clear_error(db, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(service.ServiceError, match=f"cannot listen on 127.0.0.1:{port}"):
            service.Service(_service_settings(db, tmp_path, port=port), run_controller=lambda *a: None).run()


def test_the_controller_follows_processing_sessions_and_fails_those_with_bad_parameters(db, tmp_path, caplog):
    from emlive.web import control

    configured = settings(tmp_path)
    good = start(tmp_path, "grid1", params={"motion": {"bin_factor": 2}})
    bad = start(tmp_path, "grid2", params={"motion": {"bin_factor": -1}})
    stopped = control.stop_processing(start(tmp_path, "grid3"))
    followed = service.sessions_to_process(configured)
    assert [(s.name, p.steps["motion"].bin_factor) for s, p in followed] == [("grid1", 2)]
    bad.refresh_from_db()
    assert (bad.state, stopped.state, control.status_of(bad).state) == ("failed", "stopped", "processing_failure")
    assert "p1/grid2 cannot be processed, its parameters are not valid" in caplog.text and "bin_factor" in caplog.text
    assert service.sessions_to_process(configured)[0][0].pk == good.pk


def test_a_complete_session_written_to_again_is_processed_again(db, tmp_path):
    from django.utils import timezone

    from emlive.db.models import Session

    written, quiet, old = (start(tmp_path, session=name, movies=("m0.tif",)) for name in ("written", "quiet", "old"))
    then = timezone.now() - timezone.timedelta(seconds=30)
    Session.objects.filter(pk__in=[written.pk, quiet.pk]).update(state="complete", updated_at=then)
    Session.objects.filter(pk=old.pk).update(state="complete", updated_at=then - timezone.timedelta(days=3))
    for session in (written, quiet, old):
        os.utime(session.raw_dir, (then.timestamp() - 60,) * 2)  # the folders as they were when completed
    (tmp_path / "p1" / "sessions" / "ann" / "written" / "raw" / "GridSquare_2").mkdir()  # EPU writes below raw/
    (tmp_path / "p1" / "sessions" / "ann" / "written" / "raw" / "GridSquare_2" / "m1.tif").write_bytes(b"x")
    (tmp_path / "p1" / "sessions" / "ann" / "old" / "raw" / "m1.tif").write_bytes(b"x")

    assert [s.name for s in service.reopen_written_sessions()] == ["written"]
    assert {s.name: s.state for s in Session.objects.all()} == {"written": "processing", "quiet": "complete", "old": "complete"}
    assert service.reopen_written_sessions() == []  # processing now: nothing more to do
