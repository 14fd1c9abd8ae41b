"""Reattaching to a launcher after a supervisor restart: its running children are
adopted (same PIDs, no restart) and the exits it saw while no supervisor ran are replayed
through the restart policy.  Which of two children to keep is :mod:`.adoption`'s pure
choice."""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral.states import Desired

from . import adoption, policy
from .effects import exit_record
from .instance import Instance, parse_launcher_name
from .launcher_client import Message
from .machine import Trigger

if TYPE_CHECKING:
    from .loop import Supervisor

# The machine's trigger for an exit replayed after a restart, when the policy leaves the
# instance down (a restart needs none: it is down, and reconcile starts it).
_AWAY = {policy.Verdict.STAY_DOWN: Trigger.AWAY_DOWN, policy.Verdict.GIVE_UP: Trigger.AWAY_GIVE_UP}


class Reattach:
    """Adopts the launcher's children into ``core``'s records.

    Attributes:
        adopted: how many instances were adopted (the ``up`` line says so).
        watch_after_attach: adopted instances with a health check, watched once attached.
    """

    def __init__(self, core: Supervisor) -> None:
        self._core = core
        self.adopted = 0
        self.watch_after_attach: list[Instance] = []

    def adopt(self, child: Message) -> None:
        """Take over a running child.  An instance of an older generation (a rollout was
        under way when the last supervisor died) is adopted too, and replaced once
        attached; a newer, unconfirmed one beside it is stopped and started again."""
        parsed = parse_launcher_name(str(child.get("name", "")))
        name, index, gen = parsed if parsed else ("", -1, 0)
        service = self._core.services.get(name)
        pid = int(child["pid"])
        if service is None or not adoption.wanted(service, index):
            # Not wanted any more (unloaded or stopped while no supervisor ran): stop it.
            self._core.effects.terminate_pid(pid, service.spec if service else None)
            return
        present = service.instances.get(index)
        if present is not None:
            if adoption.arbitrate(present.gen, gen, service.gen) is adoption.Keep.PRESENT:
                self._core.effects.terminate_pid(pid, service.spec)
                return
            assert present.pid is not None
            self._core.effects.terminate_pid(present.pid, service.spec)
            if present in self.watch_after_attach:
                self.watch_after_attach.remove(present)
        inst = Instance(service=name, index=index, gen=gen, pid=pid,
                        started_at=float(child.get("started_at", self._core.clock.time())),
                        passed=True, spec=self._core.rollouts.pinned_spec(name, gen))
        self._core.feed(inst, Trigger.ADOPTED, "adopted")
        inst.spawns = max(1, int(child.get("spawns", 1)) - self._core.effects.spawn_base.get(
            inst.launcher_name, 0))
        self.adopted += 1
        self._core.traffic.adopt_ports(inst)
        service.instances[index] = inst
        if service.spec.health is not None:
            self.watch_after_attach.append(inst)
        self._core.events.emit(name, "adopt", f"adopted pid {pid} after a supervisor restart",
                         instance=index, pid=pid, to=inst.state.value)
        self._core.effects.orders.adopted(inst, child)

    def resume_respawn(self, waiting: Message) -> None:
        """The launcher waits out the delay of a respawn the last supervisor ordered
        (``waiting``: a ``Children.respawns`` entry): the instance is in backoff for the
        rest of it, and its start takes the process the launcher starts then.  A respawn
        no longer wanted (unloaded, stopped, scaled down, replaced) is cancelled."""
        parsed = parse_launcher_name(str(waiting.get("name", "")))
        old_pid, due_in = waiting.get("old_pid"), waiting.get("due_in_ms")
        if parsed is None or not isinstance(old_pid, int) or not isinstance(due_in, int):
            return
        name, index, gen = parsed
        orders = self._core.effects.orders
        service = self._core.services.get(name)
        pinned = self._core.rollouts.pinned_spec(name, gen)
        if (service is None or service.desired is Desired.DOWN
                or (gen != service.gen and pinned is None)
                or index >= service.spec.instances or index in service.instances):
            orders.withdraw({"pid": old_pid, "respawn_after_ms": max(1, due_in)})
            return
        inst = Instance(service=name, index=index, gen=gen, spec=pinned)
        service.instances[index] = inst
        exited = waiting.get("exited")
        if isinstance(exited, dict):
            inst.last_exit = exit_record(exited, None, self._core.clock)
            spawns = exited.get("spawns")
            if isinstance(spawns, int):
                inst.spawns = spawns - self._core.effects.spawn_base.get(inst.launcher_name, 0)
        inst.delay = due_in / 1000
        orders.await_respawn(inst, old_pid)
        self._core.feed(inst, Trigger.AWAY_BACKOFF,
                        f"the launcher restarts it in {inst.delay:.1f}s, as ordered before "
                        "this supervisor started")

    def replay_exit(self, exited: Message) -> None:
        """An instance exited while no supervisor ran: apply its restart policy now."""
        parsed = parse_launcher_name(str(exited.get("name", "")))
        if parsed is None:
            return
        name, index, gen = parsed
        self._core.effects.orders.withdraw(exited)  # this supervisor decides afresh
        service = self._core.services.get(name)
        pinned = self._core.rollouts.pinned_spec(name, gen)  # an old instance of a resumed rollout
        if (service is None or service.desired is Desired.DOWN
                or (gen != service.gen and pinned is None)
                or index >= service.spec.instances or index in service.instances):
            return
        inst = service.instances.setdefault(index, Instance(service=name, index=index,
                                                            gen=gen, spec=pinned))
        # The restarts that led to it, and how long it ran when the launcher started it.
        started = self._core.effects.orders.tell_away(inst, exited.get("pid"))
        at = exited.get("at")
        ran_for = service.spec.restart.cooldown if started is None or \
            not isinstance(at, (int, float)) else at - started
        # The run that ended counts: its restart, if any, is one more.
        spawns = exited.get("spawns")
        inst.spawns = (int(spawns) - self._core.effects.spawn_base.get(inst.launcher_name, 0)
                       if isinstance(spawns, int) else max(inst.spawns, 1))
        decision = policy.decide(service.spec.restart, exited.get("exit_code"),
                                 exited.get("signal"), ran_for, inst.streak,
                                 self._core.uniform)
        inst.last_exit = exit_record(exited, None, self._core.clock)
        inst.reason = decision.reason
        away = _AWAY.get(decision.verdict)
        if away is not None:
            self._core.feed(inst, away, decision.reason)
        self._core.events.emit(name, "exit", f"{decision.reason} (while no supervisor ran)",
                         instance=index, pid=exited.get("pid"),
                         exit_code=exited.get("exit_code"), signal=exited.get("signal"))
