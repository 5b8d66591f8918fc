"""Tell people when a session needs attention: it stalls, fails repeatedly or completes.

Three pieces, as everywhere in emlive:

- :func:`decide` is pure: a session's :class:`Snapshot` (counts and times read from the
  database) and what was already said about it (:class:`Memory`) in; the new memory and the
  :class:`Alert` s to send out. Each condition is one *episode*: it alerts once when it begins
  and again only after it has ended and begun anew (a new result ends a stall, a processed
  exposure ends a run of failures, a new movie or a resume ends completeness).
- :func:`snapshots` reads the sessions being processed from the database (two queries).
- :func:`send` POSTs a Slack-compatible JSON message ``{"text": ...}`` to a webhook with
  ``urllib``; a failure is logged, never raised (a broken webhook must not stop processing).

The conditions, with the ``[web]`` settings that shape them:

- **stalled**: exposures are waiting (backlog > 0) and no exposure has finished (processed or
  failed) for ``stall_after_s`` since the later of the last result and the start of this
  processing cycle;
- **failing**: the last ``failures_to_alert`` exposures to finish all failed;
- **complete**: nothing is waiting, at least one exposure was found, and no new movie has been
  found for ``complete_after_s``. The session's state is then set to ``complete``
  (:func:`mark_complete`): the controller stops watching its folder, the compatible status says
  ``processing_complete``; ``resume-processing``, or a movie written later
  (``emlive.web.service.reopen_written_sessions``), makes it processed again.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal

log = logging.getLogger(__name__)

AlertKind = Literal["stalled", "failing", "complete"]

SEND_TIMEOUT_S = 10.0
"""How long one webhook POST may take before it is given up (and logged)."""


@dataclass(frozen=True)
class Rules:
    """When to alert (the ``[web]`` settings of the same names), seconds and counts."""

    stall_after_s: float = 600.0
    failures_to_alert: int = 5
    complete_after_s: float = 1800.0


@dataclass(frozen=True)
class Snapshot:
    """One session being processed, as read at ``now_s`` (all times: seconds since the epoch).

    ``label`` names it in messages (``project/user/session``). ``cycle_started_s``: when
    processing was last started or resumed. ``last_result_s``: the latest time an exposure was
    processed or failed (None if never). ``last_found_s``: the latest time a movie was found.
    ``failure_streak``: how many of the most recently finished exposures failed in a row
    (counted up to ``Rules.failures_to_alert``).
    """

    session_id: int
    label: str
    cycle_started_s: float
    total: int
    backlog: int
    processed: int
    failed: int
    last_result_s: float | None
    last_found_s: float | None
    failure_streak: int
    last_failure_reason: str = ""


@dataclass(frozen=True)
class Memory:
    """What has been said about one session in its current processing cycle."""

    cycle_started_s: float
    stalled: bool = False
    failing: bool = False
    complete: bool = False


@dataclass(frozen=True)
class Alert:
    """One message to send; ``mark_complete``: also set the session's state to complete."""

    session_id: int
    kind: AlertKind
    text: str
    mark_complete: bool = False


@dataclass
class Notifier:
    """The memory of every session being watched (the only state :func:`decide_all` keeps), and
    since when the controller watches (see :func:`decide`)."""

    rules: Rules
    watching_since_s: float = 0.0
    memory: dict[int, Memory] = field(default_factory=dict)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def decide(
    memory: Memory | None, snap: Snapshot, *, now_s: float, rules: Rules, watching_since_s: float = 0.0
) -> tuple[Memory, list[Alert]]:
    """The alerts one session's snapshot calls for, given what was already said (pure).

    ``memory`` is None for a session not seen before; a memory from an earlier processing cycle
    (the session was stopped and resumed) is forgotten, so a resumed session can alert again.
    ``watching_since_s``: when the controller began watching (the service's start): time before
    it counts neither as a stall nor as quiet, so a restart after a long stop does not call
    sessions stalled or complete before their folders have been looked at.
    """
    if memory is None or memory.cycle_started_s != snap.cycle_started_s:
        memory = Memory(cycle_started_s=snap.cycle_started_s)
    alerts: list[Alert] = []
    start_s = max(snap.cycle_started_s, watching_since_s)

    since_s = max(start_s, snap.last_result_s or start_s)
    stalled = snap.backlog > 0 and now_s - since_s >= rules.stall_after_s
    if stalled and not memory.stalled:
        alerts.append(
            Alert(
                snap.session_id,
                "stalled",
                f":warning: emlive: session {snap.label} has stalled: {snap.backlog} exposures waiting "
                f"and none finished for {_minutes(now_s - since_s)} "
                f"({snap.processed} of {snap.total} processed, {snap.failed} failed)",
            )
        )

    failing = snap.failure_streak >= rules.failures_to_alert
    if failing and not memory.failing:
        reason = f"; last reason: {snap.last_failure_reason[:300]}" if snap.last_failure_reason else ""
        alerts.append(
            Alert(
                snap.session_id,
                "failing",
                f":x: emlive: session {snap.label}: the last {snap.failure_streak} exposures failed"
                f" ({snap.failed} failed of {snap.total} found){reason}",
            )
        )

    quiet_s = now_s - max(start_s, snap.last_found_s or start_s)
    complete = snap.backlog == 0 and snap.total > 0 and quiet_s >= rules.complete_after_s
    if complete and not memory.complete:
        alerts.append(
            Alert(
                snap.session_id,
                "complete",
                f":white_check_mark: emlive: session {snap.label} is complete: {snap.processed} exposures "
                f"processed, {snap.failed} failed, no new movie for {_minutes(quiet_s)}",
                mark_complete=True,
            )
        )
    return replace(memory, stalled=stalled, failing=failing, complete=complete), alerts


def decide_all(notifier: Notifier, snaps: list[Snapshot], *, now_s: float) -> list[Alert]:
    """:func:`decide` for every session being processed; sessions no longer processed (stopped,
    complete) are forgotten, so they alert afresh when processed again."""
    alerts: list[Alert] = []
    memory: dict[int, Memory] = {}
    for snap in snaps:
        memory[snap.session_id], new = decide(
            notifier.memory.get(snap.session_id), snap, now_s=now_s, rules=notifier.rules,
            watching_since_s=notifier.watching_since_s,
        )
        alerts.extend(new)
    notifier.memory = memory
    return alerts


def send(url: str, text: str, *, timeout_s: float = SEND_TIMEOUT_S) -> bool:
    """POST ``{"text": text}`` as JSON to the webhook ``url`` (Slack, Mattermost, Rocket.Chat,
    Teams' Slack-compatible hooks …). Returns whether it was accepted (a 2xx answer); failures are
    logged with the reason and never raised."""
    if not url.lower().startswith(("http://", "https://")):
        log.warning("webhook URL %r is not http(s)://; message not delivered: %s", _host(url), text)
        return False
    body = json.dumps({"text": text}).encode()
    try:
        request = urllib.request.Request(
            url, data=body, method="POST", headers={"Content-Type": "application/json", "User-Agent": "emlive"}
        )
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            response.read()
            return True
    except urllib.error.HTTPError as err:
        log.warning("webhook %s answered %s %s; message not delivered: %s", _host(url), err.code, err.reason, text)
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        log.warning("webhook %s unreachable (%s); message not delivered: %s", _host(url), reason, text)
    return False


def _host(url: str) -> str:
    """The scheme and host of ``url`` only: webhook paths are secrets (Slack's carry the key)."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}" if rest else "(bad URL)"


def _epoch_s(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def snapshots(*, failures_to_alert: int) -> list[Snapshot]:
    """Every session in state ``processing``, read from the database (needs Django set up).

    Two queries for the counts and times of all sessions, then one per session for the
    failure streak (its last ``failures_to_alert`` finished exposures).
    """
    from django.db.models import Count, Max, Q
    from django.db.models.functions import Coalesce

    from emlive.db.models import Exposure, Session

    processing = list(Session.objects.select_related("project").filter(state=Session.State.PROCESSING))
    if not processing:
        return []
    waiting = (Exposure.State.FOUND, Exposure.State.SUBMITTED)
    rows = {
        row["session_id"]: row
        for row in Exposure.objects.filter(session_id__in=[s.pk for s in processing])
        .values("session_id")
        .annotate(
            total=Count("id"),
            backlog=Count("id", filter=Q(state__in=waiting)),
            processed=Count("id", filter=Q(state=Exposure.State.PROCESSED)),
            failed=Count("id", filter=Q(state=Exposure.State.FAILED)),
            last_processed=Max("processed_at"),
            last_failed=Max("failed_at"),
            last_found=Max("found_at"),
        )
        .order_by()
    }
    snaps = []
    for session in processing:
        row = rows.get(session.pk, {})
        finished = list(
            Exposure.objects.filter(
                session_id=session.pk, state__in=(Exposure.State.PROCESSED, Exposure.State.FAILED)
            )
            .annotate(finished_at=Coalesce("processed_at", "failed_at"))
            .order_by("-finished_at", "-id")
            .values_list("state", "fail_reason")[:failures_to_alert]
        )
        streak = 0
        for state, _reason in finished:
            if state != Exposure.State.FAILED:
                break
            streak += 1
        times = [t for t in (row.get("last_processed"), row.get("last_failed")) if t is not None]
        owner = f"{session.owner}/" if session.owner else ""
        snaps.append(
            Snapshot(
                session_id=session.pk,
                label=f"{session.project.name}/{owner}{session.name}",
                cycle_started_s=(session.cycle_started_at or session.created_at).timestamp(),
                total=row.get("total", 0),
                backlog=row.get("backlog", 0),
                processed=row.get("processed", 0),
                failed=row.get("failed", 0),
                last_result_s=_epoch_s(max(times)) if times else None,
                last_found_s=_epoch_s(row.get("last_found")),
                failure_streak=streak,
                last_failure_reason=finished[0][1] if streak else "",
            )
        )
    return snaps


def mark_complete(session_id: int, *, cycle_started_s: float) -> bool:
    """Set a processing session's state to ``complete`` unless it was stopped, resumed or
    restarted since the snapshot (then nothing changes). Returns whether it was set."""
    from django.db.models import Q
    from django.utils import timezone

    from emlive.db.models import Session

    session = Session.objects.filter(pk=session_id, state=Session.State.PROCESSING).first()
    if session is None or (session.cycle_started_at or session.created_at).timestamp() != cycle_started_s:
        return False
    unchanged = Q(cycle_started_at=session.cycle_started_at) if session.cycle_started_at else Q(cycle_started_at=None)
    return bool(
        Session.objects.filter(unchanged, pk=session_id, state=Session.State.PROCESSING).update(
            state=Session.State.COMPLETE, updated_at=timezone.now()
        )
    )
