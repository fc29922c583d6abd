"""A cluster job's time limit, watched: warnings before it, everything home, its end said.

The watch asks the scheduler (squeue, one exec over the connection) every half minute, and
keeps the job's end as a local deadline in between, so warnings come on time without asking
more often; once the end is near or past, it asks every few seconds, so the end is said at
once, with the scheduler's reason (sacct) where the cluster keeps one.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from rjn import probe, proc
from rjn.errors import RjnError
from rjn.helper_client import HelperClient
from rjn.shared.record import record

POLL = 30.0
POLL_NEAR_END = 5.0
# States in which the job still holds its node.
RUNNING = ("RUNNING", "CONFIGURING", "SUSPENDED")
# How many times, a second apart, an ended job still COMPLETING is asked how it ended.
COMPLETING_LOOKS = 10


def seconds(text: str) -> int | None:
    """SLURM's time ("2-03:04:05", "03:04:05", "04:05", "5" minutes) in seconds; None for
    what has no end ("UNLIMITED", "NOT_SET", "INVALID", "")."""
    found = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not found:
        return None
    days, first, second, third = found.groups()
    if third is not None:  # [D-]HH:MM:SS
        hours, minutes, secs = int(first), int(second), int(third)
    elif second is not None and days:  # D-HH:MM
        hours, minutes, secs = int(first), int(second), 0
    elif second is not None:  # MM:SS
        hours, minutes, secs = 0, int(first), int(second)
    else:  # D-HH, or minutes
        hours, minutes, secs = (int(first), 0, 0) if days else (0, int(first), 0)
    return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + secs


def shown(count: int) -> str:
    """1h05m, 9m30s, 45s."""
    hours, rest = divmod(max(0, count), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def thresholds(warn_minutes: Sequence[int], limit: int | None) -> list[int]:
    """When to warn, in seconds before the end, largest first: the configured points that fit
    in the first half of the job; for a job too short for any, a quarter and a tenth of it."""
    points = sorted({m * 60 for m in warn_minutes}, reverse=True)
    if limit is None:
        return points
    fitting = [p for p in points if p <= limit / 2]
    return fitting or sorted({max(5, limit // 4), max(3, limit // 10)}, reverse=True)


@record
class JobTime:
    """What squeue says of the job now."""

    state: str
    left: int | None  # seconds, None: no limit
    limit: int | None
    node: str


def ask(helper: HelperClient, job: str) -> JobTime | None:
    """The job as the scheduler has it; None once it has left the queue."""
    # (every state: an ended job's, TIMEOUT or PREEMPTED, stays listed for a few minutes)
    squeue = ["squeue", "-h", "-t", "all", "-j", job, "-o", "%T|%L|%l|%N"]
    queued = helper.connection.run(helper.remote(squeue), timeout=30)
    line = (queued.out.strip().splitlines() or [""])[0]
    if queued.code != 0 or not line:
        return None if queued.code == 0 or "Invalid job id" in queued.err else _unknown()
    state, left, limit, node = [*line.split("|"), "", "", "", ""][:4]
    return JobTime(state[:40], seconds(left), seconds(limit), node[:100])


def _unknown() -> JobTime:
    return JobTime("UNKNOWN", None, None, "")


def ends_at(time_left: str | None) -> float | None:
    """When a job's time limit ends it (wall clock), from the time left SLURM gave."""
    left = seconds(time_left or "")
    return time.time() + left if left is not None else None


class Clock:
    """The job's time, kept for the watch. `tick()` is called often (it asks the scheduler
    only when due) and says what happened: "warned", "last" (the last warning: time to bring
    everything home), "ended", or None. Once ended, `follow_on` is the job queued to take
    over (`rjn renew`), if there is one.

    `renew` queues that job (its id); given, it is called at the first warning ([slurm]
    renew = "always"). With `ask`, the warnings say how to renew."""

    def __init__(
        self,
        helper: HelperClient,
        remote_dir: str,
        job: str,
        warn_minutes: Sequence[int],
        say: Callable[[str], Any],
        notify: Callable[[str], Any] | None = None,
        renew: Callable[[], str] | None = None,
        ask: bool = False,
    ) -> None:
        self.helper, self.remote_dir, self.job = helper, remote_dir, job
        self.warn_minutes, self.say, self.notify = warn_minutes, say, notify or desktop_notice
        self.renew, self.ask = renew, ask
        self.end_at: float | None = None
        self.limit: int | None = None
        self.node = ""
        self.asked_at = 0.0
        self.given: set[int] = set()
        self.ended = False
        self.follow_on: str | None = None

    def tick(self) -> str | None:
        if self.ended:
            return None
        now = time.monotonic()
        near = self.end_at is not None and self.end_at - now < 2 * POLL
        if now - self.asked_at >= (POLL_NEAR_END if near else POLL):
            self.asked_at = now
            try:
                seen = ask(self.helper, self.job)
            except RjnError:
                return None  # the link: the watch's own check says so
            if seen is None or seen.state not in (*RUNNING, "UNKNOWN"):
                return self._ended(seen)
            if seen.state != "UNKNOWN":
                first = not self.node
                self.limit, self.node = seen.limit, seen.node
                if seen.left is not None:
                    self.end_at = now + seen.left
                elif seen.limit is None:
                    self.end_at = None  # no limit (past its limit, squeue says INVALID)
                if first and seen.left is not None:  # once, as the watch starts
                    limit = f" of its {shown(seen.limit)} limit" if seen.limit else ""
                    self.say(f"job {self.job} on {self.node}: {shown(seen.left)} left{limit}")
        return self._warn(now)

    def _warn(self, now: float) -> str | None:
        if self.end_at is None:
            return None
        left = self.end_at - now
        points = thresholds(self.warn_minutes, self.limit)
        due = [p for p in points if left <= p and p not in self.given]
        if not due:
            return None
        first = not self.given
        self.given.update(p for p in points if p >= min(due))
        limit = f" of its {shown(self.limit)} limit" if self.limit else ""
        last = min(due) == points[-1]
        message = (f"job {self.job} on {self.node or 'its node'}: {shown(int(left))} left"
                   f"{limit}; save your notebooks"
                   + ("; bringing everything home now" if last else ""))  # fmt: skip
        if self.ask and self.follow_on is None:
            message += "; `rjn renew` queues a job that takes over on this URL"
        self.say(message)
        self.notify(message)
        if first and self.renew is not None:
            try:
                self.follow_on = self.renew()
            except RjnError as failed:
                self.say(f"no follow-on job: {failed.message}")
            else:
                self.say(f"follow-on job {self.follow_on} queued: it takes over on this URL "
                         f"when job {self.job} ends")  # fmt: skip
        return "last" if last else "warned"

    def _ended(self, seen: JobTime | None) -> str:
        self.ended = True
        # (the scheduler ends a job at its limit on a timer of its own: within a poll of it)
        at_limit = self.end_at is not None and time.monotonic() >= self.end_at - POLL
        reason = seen.state if seen is not None and seen.state != "COMPLETING" else None
        if reason in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"):
            reason = f"{reason}: requeued by the scheduler, preempted or its node failed"
        job = self._last_look()
        then = "`rjn open` starts a new job"
        if job.id == self.job:
            reason = reason or job.state
            self.follow_on = job.next if job.next_state else None
            if job.ended == "idle":
                reason = "idle: Jupyter stopped itself ([jupyter] idle_timeout)"
                if self.follow_on:  # idle release stops the billing: nothing takes over
                    with contextlib.suppress(RjnError):
                        self.helper.connection.run(self.helper.remote(["scancel", self.follow_on]),
                                                   timeout=30)  # fmt: skip
                    then = f"its follow-on job {self.follow_on} was cancelled; {then}"
                    self.follow_on = None
        if reason in (None, "ENDED"):
            reason = "its time limit" if at_limit else "no reason kept (no sacct)"
        if self.follow_on:
            then = f"job {self.follow_on} takes over on this URL"
        message = f"job {self.job} ended ({reason}): Jupyter on {self.node or 'its node'} is gone; "
        self.say(message + then)
        self.notify(message + then)
        return "ended"


    def _last_look(self) -> probe.Job:
        """The scheduler's word on the end, and a follow-on job, if queued: a job still
        COMPLETING (its processes being cleaned up) is asked again, for a while, for how
        it ended."""
        for _ in range(COMPLETING_LOOKS):
            try:
                job = probe.look(self.helper, self.remote_dir, timeout=30).job
            except RjnError:
                return probe.Job()
            if job.id != self.job or job.state != "COMPLETING":
                break
            time.sleep(1)
        return job


def desktop_notice(message: str) -> None:
    """A desktop notification where this machine has a way to show one; silent elsewhere."""
    if sys.platform == "darwin" and shutil.which("osascript"):
        argv = ["osascript", "-e", "on run argv", "-e",
                'display notification (item 1 of argv) with title "rjn"', "-e", "end run",
                message]  # fmt: skip
    elif shutil.which("notify-send"):
        argv = ["notify-send", "--app-name=rjn", "rjn", message]
    else:
        return
    with contextlib.suppress(RjnError):
        proc.run(argv, timeout=5)
