"""Which hosts the next attempt runs on: the job's hosts, the spares standing by, the hosts excluded.

After a failed attempt, `HostPool.after_attempt` reads its failures. A host is excluded when the
attempt failed because of it: it was lost (its agent went silent or could not be reached), a rank of
it crashed in a way that looks like the hardware (SIGBUS, an NPU or HCCL error), its NPU pre-flight
failed, it was named a straggler with ``stragglers.action: exclude``, or it has been the root cause
of ``exclusion.after`` failed attempts of any kind (only when a spare or ``elastic:`` can take its
place: the cause may be the program, and restarting in place is what a job without them does). Then a spare takes its place (the same position
in the host list and the excluded host's device ids, so every rank keeps its number and the world
size is unchanged); with no spare left and ``elastic:`` the host is left out (the job shrinks); else
the job ends, naming it.

An excluded host is not used again until its cooldown ends: ``exclusion.cooldown`` the first time,
doubled each time the same host is excluded again (Horovod elastic's exponential cooldown), at most
``MAX_COOLDOWN_FACTOR`` times. Then it may come back as a spare, once it passes the pre-flight.

Pure: the clock is passed in, nothing here starts or reaches a host.
"""
from __future__ import annotations

import dataclasses
import enum
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from launcher.report import RankFailure, order_failures
from launcher.spec import ElasticSpec, ExclusionSpec, HostSpec

DETAIL_CHARS = 300  # an exclusion's detail: the first line of why, at most this long (result.json, status)
MAX_COOLDOWN_FACTOR = 16  # the cooldown doubles with each exclusion of the same host, up to 16 x the first
AGENT = "agent"  # a host's agent (launcher.supervisor.AGENT): its failure is the host's, not a rank's
# a rank's end that points at the machine rather than the program: a bus error (a bad memory page), and the
# error lines of the Ascend runtime and HCCL (CANN error codes EE/EI/EL/EJ/EZ9999, aclrt, HBM/ECC, a lost device)
HARDWARE_SIGNALS = frozenset({"SIGBUS"})
HARDWARE_TEXT = re.compile(r"\b(E[EIJLZ]\d{4}|aclrt\w*|HCCL|hccl\w*|HBM|ECC|uncorrectable|device (?:lost|hang|"
                           r"not found)|npu (?:error|lost|hang)|rtStream\w*|halGetDevice\w*)", re.IGNORECASE)


class Why(str, enum.Enum):
    """Why a host was excluded."""

    LOST = "lost"  # its agent went silent or could not be reached
    HARDWARE = "hardware"  # a rank of it crashed in a way that points at the machine
    NPU_PREFLIGHT = "npu pre-flight"  # its NPU pre-flight failed (at a restart)
    PREFLIGHT = "pre-flight"  # a spare that did not pass the pre-flight
    STRAGGLER = "straggler"  # named a straggler with stragglers.action: exclude
    REPEATED = "repeated failures"  # the root cause of exclusion.after failed attempts

    def __str__(self) -> str:
        return self.value


class Move(str, enum.Enum):
    """What the next attempt does about an excluded host."""

    REPLACED = "replaced"  # a spare took its place
    SHRUNK = "shrunk"  # left out: the job goes on with fewer hosts (elastic:)
    NO_SPARE = "no spare"  # nothing can take its place: the job ends

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Exclusion:
    """A host taken out of the job, and until when."""

    host: str  # its address
    label: str  # how messages name it
    why: Why
    detail: str  # the failure's line
    attempt: Optional[int]  # the attempt that failed because of it (None: a spare's pre-flight at the start)
    at: float  # wall time it was excluded
    until: float  # wall time its cooldown ends
    count: int = 1  # the how-many-th exclusion of this host

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "label": self.label, "why": str(self.why), "detail": self.detail,
                "attempt": self.attempt, "at": round(self.at, 3), "until": round(self.until, 3),
                "count": self.count}


@dataclass(frozen=True)
class Change:
    """One excluded host and what took its place (``spare``), or that the job shrank or must end."""

    exclusion: Exclusion
    move: Move
    spare: Optional[HostSpec] = None  # the spare that took its place, with its device ids

    def to_dict(self) -> dict[str, Any]:
        return {**self.exclusion.to_dict(), "move": str(self.move),
                "spare": self.spare.label if self.spare is not None else None}

    def describe(self) -> str:
        e = self.exclusion
        cooldown = f"excluded for {e.until - e.at:.0f} s"
        if self.move is Move.REPLACED and self.spare is not None:
            return (f"mscluster: spare {self.spare.label} takes the place of {e.label} ({e.why}: {e.detail}; "
                    f"{cooldown}): its ranks and devices {list(self.spare.devices)} move there")
        if self.move is Move.SHRUNK:
            return f"mscluster: {e.label} is left out ({e.why}: {e.detail}; {cooldown}); no spare is left"
        return f"mscluster: {e.label} failed ({e.why}: {e.detail}) and no spare is left to take its place"


def host_cause(failure: RankFailure) -> Optional[Why]:
    """Why a failure is its host's fault (the host must be excluded at once), or None for one that may be
    the program's (counted towards ``exclusion.after``)."""
    if failure.reason == "lost" or (failure.name == AGENT and failure.rank is None and failure.reason is None):
        return Why.LOST  # silent, or its agent could not be started or ended without a word
    if failure.reason == Why.STRAGGLER.value:
        return Why.STRAGGLER
    if failure.rank is not None and (failure.signal in HARDWARE_SIGNALS or HARDWARE_TEXT.search(
            " ".join((failure.message, *failure.traceback_tail)))):
        return Why.HARDWARE
    return None


def cooldown_for(spec: ExclusionSpec, count: int) -> float:
    """Seconds the ``count``-th exclusion of one host lasts: doubled each time, at most 16 x the first."""
    return spec.cooldown * min(2 ** (count - 1), MAX_COOLDOWN_FACTOR)


def take_place(spare: HostSpec, host: HostSpec) -> HostSpec:
    """The spare as it runs in ``host``'s place: the host's device ids (its own IPs for them where it has them)."""
    return dataclasses.replace(spare, devices=host.devices,
                               device_ips=tuple((d, ip) for d, ip in spare.device_ips if d in host.devices),
                               super_device_ids=tuple((d, s) for d, s in spare.super_device_ids if d in host.devices))


class HostPool:
    """The job's hosts across its attempts."""

    def __init__(self, hosts: Sequence[HostSpec], spares: Sequence[HostSpec], exclusion: ExclusionSpec,
                 elastic: Optional[ElasticSpec] = None, clock: Callable[[], float] = time.time) -> None:
        self.hosts: list[HostSpec] = list(hosts)  # the next attempt's, in rank order
        self.spares: list[HostSpec] = list(spares)  # standing by, in the file's order
        self.spec, self.elastic, self.clock = exclusion, elastic, clock
        self.excluded: dict[str, Exclusion] = {}  # address -> its latest exclusion (also after its cooldown)
        self.benched: dict[str, HostSpec] = {}  # excluded hosts as the file lists them, to come back as spares
        self.root_causes: dict[str, int] = {}  # address -> failed attempts it was the root cause of
        self.changes: list[Change] = []  # every change, in order
        self.first_world = sum(len(h.devices) for h in hosts)

    # -- reading an attempt ----------------------------------------------------------------------
    def culprits(self, failures: Sequence[RankFailure]) -> list[tuple[str, Why, str]]:
        """The hosts a failed attempt's failures exclude: (address, why, the failure's line), root cause first.

        Counts the root cause's host towards ``exclusion.after``; every other host lost in the attempt
        (two hosts can go down at once) is excluded too."""
        ordered = order_failures(failures)
        if not ordered:
            return []
        active = {h.address for h in self.hosts}
        found: list[tuple[str, Why, str]] = []
        root = ordered[0]
        why = host_cause(root)
        if root.host in active:
            self.root_causes[root.host] = self.root_causes.get(root.host, 0) + 1
            # the cause may be the program: with nowhere to go (no spare, no elastic:) it restarts in place, as
            # without this module
            if why is None and self.root_causes[root.host] >= self.spec.after and (self.spares or self.elastic):
                why = Why.REPEATED
            if why is not None:
                found.append((root.host, why, _line(root, why, self.root_causes[root.host])))
        for f in ordered[1:]:
            if f.reason == "lost" and f.host in active and f.host not in {h for h, _, _ in found}:
                found.append((f.host, Why.LOST, _line(f, Why.LOST, 0)))
        return found

    # -- changing the hosts ------------------------------------------------------------------------
    def exclude(self, address: str, why: Why, detail: str, attempt: Optional[int]) -> Exclusion:
        """Take ``address`` out (a job host or a spare) for its cooldown; ``detail``: its first line is kept."""
        now = self.clock()
        detail = (detail.strip().splitlines() or [str(why)])[0][:DETAIL_CHARS]
        count = self.excluded[address].count + 1 if address in self.excluded else 1
        host = next((h for h in (*self.hosts, *self.spares) if h.address == address), None)
        label = host.label if host is not None else address
        exclusion = Exclusion(host=address, label=label, why=why, detail=detail, attempt=attempt, at=now,
                              until=now + cooldown_for(self.spec, count), count=count)
        self.excluded[address] = exclusion
        self.root_causes.pop(address, None)  # a host that comes back starts counting afresh
        if host is not None:
            original = next((s for s in self.spares if s.address == address), host)
            self.benched[address] = original
        self.spares = [s for s in self.spares if s.address != address]
        return exclusion

    def replace(self, exclusion: Exclusion) -> Change:
        """The excluded host's place in the next attempt: a spare, or left out (elastic:), or none."""
        index = next((i for i, h in enumerate(self.hosts) if h.address == exclusion.host), None)
        if index is None:  # a spare excluded: nothing runs there
            change = Change(exclusion, Move.REPLACED, None)
            self.changes.append(change)
            return change
        gone = self.hosts[index]
        spare = next((s for s in self.spares if set(gone.devices) <= set(s.devices)), None)
        if spare is not None:
            self.spares.remove(spare)
            self.hosts[index] = take_place(spare, gone)
            change = Change(exclusion, Move.REPLACED, self.hosts[index])
        elif self.elastic is not None and len(self.hosts) - 1 >= self.elastic.min_hosts:
            del self.hosts[index]
            change = Change(exclusion, Move.SHRUNK)
        else:
            change = Change(exclusion, Move.NO_SPARE)
        self.changes.append(change)
        return change

    def after_attempt(self, failures: Sequence[RankFailure], attempt: int) -> list[Change]:
        """Exclude the hosts a failed attempt's failures point at and fill their places."""
        return [self.replace(self.exclude(address, why, detail, attempt))
                for address, why, detail in self.culprits(failures)]

    def cooled_down(self) -> list[HostSpec]:
        """Excluded hosts whose cooldown has ended: they may stand by again once their pre-flight passes."""
        now = self.clock()
        return [self.benched[a] for a, e in self.excluded.items() if a in self.benched and now >= e.until]

    def readmit(self, host: HostSpec) -> None:
        """A host back from its cooldown (its pre-flight passed) stands by as a spare."""
        self.benched.pop(host.address, None)
        if all(s.address != host.address for s in self.spares):
            self.spares.append(host)

    @property
    def world_size(self) -> int:
        return sum(len(h.devices) for h in self.hosts)

    def to_dict(self) -> dict[str, Any]:
        """What result.json and status.json say of the hosts."""
        now = self.clock()
        return {"active": [h.label for h in self.hosts], "spares": [h.label for h in self.spares],
                "excluded": [{**e.to_dict(), "cooling": now < e.until} for e in self.excluded.values()
                             if e.host in self.benched],
                "changes": [c.to_dict() for c in self.changes]}


def _line(failure: RankFailure, why: Why, count: int) -> str:
    who = failure.name if failure.rank is None else f"rank {failure.rank}"
    if why is Why.REPEATED:
        return f"the root cause of {count} failed attempts, the last {who}: {failure.outcome()}"
    return f"{who}: {(failure.message.strip().splitlines() or [failure.outcome()])[0]}"  # exclude() cuts it
