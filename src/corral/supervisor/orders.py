"""Standing orders: the restart decision for an instance's next exit, handed to the
launcher before the exit happens.

The supervisor keeps every decision.  What the restart policy will say about an exit that
has not happened yet, it says in advance: with each Spawn (``on_exit``) it tells the
launcher to start the process again at once, or after the backoff delay it drew, or to
wait (null).  The launcher then restarts a crashed process without a round trip, and
whether or not a supervisor is connected (killed, stopped, being upgraded).

An order is given only where the policy's verdict cannot depend on how the process ends
or on anything the supervisor must do first: policy ``always`` with no per-exit-code
override, no ``depends_on`` (a restart waits for dependencies), no ``before`` script or
``resources`` (each start prepares a fresh working directory), no group ``config``,
``templates`` or ``binds`` (each start renders from the group's current config and
members, and a strict bind waits for a producer), an instance that is wanted
running at the current generation, and a launcher that speaks protocol 1.2.  The order is
what :func:`.policy.decide` says of a death *now*:

- with the Spawn: a young death (the streak so far decides: at once, after a delay, or
  null past ``max_restarts``);
- at ``cooldown`` after the start: a restart at once, the streak forgotten (sent only when
  the launcher's order changes);
- after a respawn the launcher carried out: the order for the new process (an order is
  for one exit).

A launcher that speaks protocol 1.3 gets the policy's next answers in one order (see
:mod:`corral.protocol.standing`): the delays of the next young deaths in a row, drawn
now with their jitter and ending where ``max_restarts`` gives up, with the cooldown, so
that a crash loop keeps its backoff and limit while no supervisor is connected.  The
cooldown update is then the launcher's, and after each respawn it carried out the
supervisor replaces the order with one drawn from the streak it has counted.

It is withdrawn before it could fire whenever the decision changes: a stop's
``Terminate`` cancels it in the launcher; an instance being replaced (it is retiring) or
whose backoff is cancelled (a stop or a start while it waits) gets ``Order{pid, null}``.

When an ``Exited`` says ``respawn_after_ms``, the launcher is carrying the order out: the
exit is decided as the order said, and the machine runs as for any restart, except that
its spawn waits for the launcher's ``Respawned`` instead of sending a Spawn.  A
``Respawned`` nobody waits for (the instance was stopped or replaced meanwhile) is
stopped at once; one replayed to a new supervisor before it has adopted the launcher's
children is left to the adoption, which sees the new process in ``List`` and tells each
exit of the chain that led to it.  A chain read at once (a supervisor that was stopped
while the launcher restarted a process several times) is taken one link at a time: the
``Exited`` and ``Respawned`` of processes the instance has not taken yet wait in a
backlog for the link before them.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from corral.protocol import messages as m
from corral.protocol.standing import StandingOrder, sequence_ms
from corral.spec import ProcessSpec
from corral.states import Desired, ServiceState

from . import policy
from .instance import Instance, parse_launcher_name
from .launcher_client import Message
from .machine import Trigger

if TYPE_CHECKING:
    from .loop import Supervisor

#: The first protocol version with standing orders.
ORDERS_VERSION = (1, 2)
#: The first with sequences (the policy's next answers in one order).
SEQUENCES_VERSION = (1, 3)
#: How many young deaths a sequence answers for before it waits for a supervisor.
SEQUENCE = 16
_GIVES = (policy.Verdict.RESTART_NOW, policy.Verdict.RESTART_LATER)


@dataclass
class _Held:
    """The order the launcher holds for one process, and the streak its first answer
    leaves (None: that answer is no restart)."""

    pid: int | None  # None until the Spawn carrying it has answered
    order: StandingOrder | None = None
    streak: policy.Streak | None = None
    cooldown: asyncio.TimerHandle | None = None


@dataclass
class _Awaited:
    """A respawn the launcher is carrying out for ``inst``."""

    inst: Instance
    old_pid: int
    reply: asyncio.Future[Message]


class Orders:
    """The standing orders of ``core``'s instances, by launcher name."""

    def __init__(self, core: Supervisor) -> None:
        self._core = core
        self._held: dict[str, _Held] = {}
        self._awaited: dict[str, _Awaited] = {}
        # The links of a chain of respawns read before the instance took the one before:
        # Respawned(a -> b), Exited(b), Respawned(b -> c), ... in the launcher's order.
        self._backlog: dict[str, list[Message]] = {}
        # Replayed to a new supervisor: each exit and Respawned of the processes the
        # launcher restarted while no supervisor ran, told when the last one is adopted.
        self._while_away: dict[str, list[tuple[Message, Message]]] = {}
        # Read while a new supervisor attaches, for no exit it was told: a respawn that
        # fired between the launcher's List and the attach taking it up.
        self._unclaimed: dict[str, Message] = {}

    # ------------------------------------------------------------- giving orders
    def for_spawn(self, inst: Instance, spec: ProcessSpec) -> bytes:
        """The encoded ``on_exit`` field for the Spawn of ``inst`` (``b""``: none)."""
        self._drop(inst)
        if not self._eligible(inst, spec):
            return b""
        held = self._hold(inst, spec, None, ran_for=0.0)  # null still gets a cooldown
        return b"" if held.order is None else \
            b'"on_exit":%s,' % json.dumps(held.order.wire()).encode()

    def spawned(self, inst: Instance, spec: ProcessSpec, respawned: bool) -> None:
        """``inst``'s new process is known (``inst.pid``): its order is in place (given
        with the Spawn; given now after a respawn) and its cooldown update armed."""
        if inst.pid is None or inst.state is not ServiceState.STARTING:
            self._drop(inst)
            return
        held = self._held.get(inst.launcher_name)
        if respawned:
            held = self._hold(inst, spec, inst.pid, ran_for=0.0)
            if held.order is not None:
                self._send(inst.pid, held.order)
        if held is None:
            return
        held.pid = inst.pid
        self._arm_cooldown(inst, spec, held)

    def _hold(self, inst: Instance, spec: ProcessSpec, pid: int | None,
              ran_for: float) -> _Held:
        """Draw the order of ``inst``'s process ``pid`` and keep it as held."""
        held = _Held(pid)
        if not self._sequences():
            decision = self._decide(inst, spec, ran_for)
            held.order = _order(decision)
            held.streak = None if decision is None else decision.streak
        elif self._eligible(inst, spec):
            uniform = self._core.uniform
            drawn = policy.young_deaths(spec.restart, inst.streak, SEQUENCE, uniform)
            first = drawn[0]
            if first is not None:
                deaths = inst.streak.young_deaths + 1
                held.streak = policy.Streak(deaths, first if deaths > 1 else 0.0)
            delays = sequence_ms(drawn)
            # A fresh streak's sequence is the one just drawn when the streak is fresh
            # (a first start, or after a death past the cooldown): half the draws.
            fresh = delays if inst.streak == policy.Streak() else sequence_ms(
                policy.young_deaths(spec.restart, policy.Streak(), SEQUENCE, uniform))
            held.order = StandingOrder(delays[0], tuple(delays[1:] or delays),
                                       round(spec.restart.cooldown * 1000), tuple(fresh))
        self._held[inst.launcher_name] = held
        return held

    def _arm_cooldown(self, inst: Instance, spec: ProcessSpec, held: _Held) -> None:
        if self._eligible(inst, spec) and not self._sequences():  # else the order has it
            held.cooldown = asyncio.get_running_loop().call_later(
                max(0.0, spec.restart.cooldown - self._ran_for(inst)), self._cooled_down,
                inst, held)

    def _cooled_down(self, inst: Instance, held: _Held) -> None:
        """``cooldown`` after the start: a death is no longer young."""
        held.cooldown = None
        if self._held.get(inst.launcher_name) is not held or inst.pid != held.pid:
            return
        spec = self._core.spec_of(inst)
        decision = self._decide(inst, spec, ran_for=max(spec.restart.cooldown,
                                                        self._ran_for(inst)))
        before, held.order = held.order, _order(decision)
        held.streak = None if decision is None else decision.streak
        if held.pid is not None and held.order != before:
            self._send(held.pid, held.order)

    def cancel(self, inst: Instance) -> None:
        """Withdraw ``inst``'s order, and a respawn the launcher waits to carry out (its
        backoff was cancelled, or it is being replaced)."""
        awaited = self._awaited.pop(inst.launcher_name, None)
        if awaited is not None and awaited.inst is inst:
            self._send(awaited.old_pid, None)
        held = self._drop(inst)
        if held is not None and held.pid is not None and held.order is not None:
            self._send(held.pid, None)
        self._flush(inst.launcher_name)

    def withdraw(self, exited: Message) -> None:
        """Cancel the delayed respawn an ``Exited`` replayed to a new supervisor says the
        launcher waits to carry out (its process is not in ``List`` yet): the new
        supervisor decides that exit itself."""
        after, pid = exited.get("respawn_after_ms"), exited.get("pid")
        if isinstance(after, int) and after > 0 and isinstance(pid, int):
            self._send(pid, None)

    def await_respawn(self, inst: Instance, old_pid: int) -> None:
        """A new supervisor takes up a respawn of ``inst`` the launcher waits to carry
        out since ``old_pid`` exited: its next spawn takes the launcher's process."""
        reply: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._awaited[inst.launcher_name] = _Awaited(inst, old_pid, reply)
        fired = self._unclaimed.pop(inst.launcher_name, None)
        if fired is not None and fired.get("old_pid") == old_pid:
            asyncio.get_running_loop().call_soon(self.on_respawned, fired)

    def attached(self) -> None:
        """A new supervisor is attached: a respawn nobody took up was in ``List``."""
        self._unclaimed.clear()

    def stopping(self, inst: Instance) -> None:
        """``inst`` is being stopped: its ``Terminate`` cancels the order in the launcher."""
        self._drop(inst)
        self._flush(inst.launcher_name)

    # ----------------------------------------------------------- orders carried out
    def decision(self, inst: Instance, exited: Message) -> policy.Decision | None:
        """The decision for an exit the launcher is carrying out an order for (None when
        it is not: the policy decides as usual); the instance's next spawn then waits for
        the launcher's ``Respawned``."""
        held = self._drop(inst)
        after = exited.get("respawn_after_ms")
        if not isinstance(after, int) or isinstance(after, bool):
            return None
        pid = exited.get("pid")
        what = policy.describe_exit(exited.get("exit_code"), exited.get("signal"))
        at = exited.get("at")
        ran_for = at - (inst.started_at or at) if isinstance(at, float) else self._ran_for(inst)
        if exited.get("cooled"):  # it outlived the order's cooldown: a streak ends
            streak = policy.Streak()
        elif (held is not None and held.pid == pid and held.streak is not None
                and held.order is not None and held.order.after_ms == after):
            streak = held.streak
        else:  # an order another supervisor gave: count it as the policy would
            spec = self._core.spec_of(inst)
            streak = policy.decide(spec.restart, exited.get("exit_code"), exited.get("signal"),
                                   ran_for, inst.streak, self._core.uniform).streak
        reply: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._awaited[inst.launcher_name] = _Awaited(inst, int(pid or 0), reply)
        backlog = self._backlog.get(inst.launcher_name)
        if backlog and backlog[0].get("type") == m.RESPAWNED and backlog[0].get("old_pid") == pid:
            asyncio.get_running_loop().call_soon(self.on_respawned, self._next(inst.launcher_name))
        if after == 0:
            return policy.Decision(policy.Verdict.RESTART_NOW, 0.0, f"{what}; restarting",
                                   streak)
        delay = after / 1000
        return policy.Decision(policy.Verdict.RESTART_LATER, delay,
                               f"{what} after {ran_for:.1f}s; restarting in {delay:.1f}s",
                               streak)

    def hold_exit(self, exited: Message) -> bool:
        """Keep the ``Exited`` of a process the launcher respawned, when it comes before
        that ``Respawned`` was taken (a chain read at once): True if it is kept."""
        backlog = self._backlog.get(str(exited.get("name", "")))
        if not backlog or backlog[-1].get("type") != m.RESPAWNED \
                or backlog[-1].get("pid") != exited.get("pid"):
            return False
        backlog.append(exited)
        return True

    def respawn_of(self, inst: Instance) -> asyncio.Future[Message] | None:
        """The launcher's answer for the respawn of ``inst`` it carries out, if it does:
        a ``Spawned`` (or ``Error``) reply made of its ``Respawned``."""
        awaited = self._awaited.get(inst.launcher_name)
        return awaited.reply if awaited is not None and awaited.inst is inst else None

    def on_respawned(self, message: Message) -> None:
        """The launcher carried out a standing order (``Respawned``)."""
        name = str(message.get("name", ""))
        awaited = self._awaited.get(name)
        if awaited is not None and awaited.old_pid == message.get("old_pid"):
            error = message.get("error")
            awaited.reply.set_result(
                {"type": m.ERROR, "code": error.get("code"), "message": error.get("message")}
                if isinstance(error, dict) else
                {"type": m.SPAWNED, "pid": message.get("pid"),
                 "started_at": message.get("started_at"), "spawns": message.get("spawns")})
            inst = awaited.inst
            backlog = self._backlog.get(name)
            if backlog and backlog[0].get("type") == m.EXITED \
                    and backlog[0].get("pid") == message.get("pid"):
                inst.early_exit = self._next(name)  # handled once the new pid is taken
            if inst.state is ServiceState.BACKOFF and inst.timer is not None:
                # The launcher's delay ran out first: the process already runs (the
                # spawn this starts takes the reply above).
                inst.timer.cancel()
                inst.timer = None
                self._core.feed(inst, Trigger.TIMER, "backoff over; restarted by the launcher")
            self._awaited.pop(name, None)
            return
        pid = message.get("pid")
        if self._core._booting:  # adoption sees the new process in List
            exited = self._core._early_exits.get(name)
            if exited is not None and exited.get("pid") == message.get("old_pid"):
                self._while_away.setdefault(name, []).append((exited, message))
            else:  # or it fired after List: see await_respawn
                self._unclaimed[name] = message
            return
        backlog = self._backlog.get(name)
        if backlog and backlog[-1].get("type") == m.EXITED \
                and backlog[-1].get("pid") == message.get("old_pid"):
            backlog.append(message)  # the chain goes on
            return
        spawning = self._core._spawning(name)
        if spawning is not None and spawning.early_exit is not None \
                and spawning.early_exit.get("pid") == message.get("old_pid"):
            self._backlog[name] = [message]  # its exit is handled once its Spawned is read
            return
        self._stop_unwanted(name, pid)

    def adopted(self, inst: Instance, child: Message) -> None:
        """A new supervisor adopted ``inst`` (``child``: its ``List`` entry): give it the
        order this supervisor's policy says, when that is not the one it has."""
        spec = self._core.spec_of(inst)
        if inst.pid is None:
            return
        self.tell_away(inst, inst.pid)
        held = self._hold(inst, spec, inst.pid, ran_for=self._ran_for(inst))
        has = child.get("on_exit")
        if (None if held.order is None else held.order.wire()) != has:
            self._send(inst.pid, held.order)
        if self._ran_for(inst) < spec.restart.cooldown:
            self._arm_cooldown(inst, spec, held)

    def tell_away(self, inst: Instance, pid: object) -> float | None:
        """Tell each exit of ``inst`` the launcher restarted while no supervisor ran, when
        the chain of them ends in its process ``pid`` (the one adopted, or the one whose
        exit is being replayed), and take the streak of young deaths it ends with.
        Returns when ``pid`` started (None: no such chain)."""
        from .effects import exit_record  # effects imports this module

        chain = self._while_away.pop(inst.launcher_name, [])
        if not chain or chain[-1][1].get("pid") != pid:
            return None
        streak = policy.Streak()
        for exited, respawned in chain:
            inst.last_exit = exit_record(exited, None, self._core.clock)
            what = policy.describe_exit(exited.get("exit_code"), exited.get("signal"))
            after = exited.get("respawn_after_ms")
            if exited.get("cooled") or not isinstance(after, int):
                streak = policy.Streak()
            else:
                streak = policy.Streak(streak.young_deaths + 1, after / 1000)
            self._core.events.emit(
                inst.service, "exit", f"{what} while no supervisor ran; the launcher "
                f"restarted it as pid {respawned.get('pid')}", instance=inst.index,
                pid=exited.get("pid"), exit_code=exited.get("exit_code"),
                signal=exited.get("signal"))
        inst.streak = streak
        started = chain[-1][1].get("started_at")
        return float(started) if isinstance(started, (int, float)) else None

    # ------------------------------------------------------------------- helpers
    def _decide(self, inst: Instance, spec: ProcessSpec,
                ran_for: float) -> policy.Decision | None:
        if not self._eligible(inst, spec):
            return None
        decision = policy.decide(spec.restart, 1, None, ran_for, inst.streak,
                                 self._core.uniform)
        return decision if decision.verdict in _GIVES else None

    def _eligible(self, inst: Instance, spec: ProcessSpec) -> bool:
        core = self._core
        launcher = core.launcher
        service = core.services.get(inst.service)
        return (launcher is not None and launcher.speaks(ORDERS_VERSION)
                and service is not None and not core.stopping_all
                and service.desired is Desired.UP and inst.gen == service.gen
                and service.instances.get(inst.index) is inst
                and inst.index < service.spec.instances
                and spec.restart.policy == "always" and not spec.restart.exit_codes
                and not spec.depends_on and spec.before is None and not spec.resources
                and not spec.uses_groups)

    def _ran_for(self, inst: Instance) -> float:
        now = self._core.clock.time()
        return now - (inst.started_at or now)

    def _sequences(self) -> bool:
        launcher = self._core.launcher
        return launcher is not None and launcher.speaks(SEQUENCES_VERSION)

    def _next(self, name: str) -> Message:
        """Take the first link of ``name``'s backlog."""
        backlog = self._backlog[name]
        message = backlog.pop(0)
        if not backlog:
            del self._backlog[name]
        return message

    def _flush(self, name: str) -> None:
        """Stop the processes a backlog of ``name`` says the launcher started: nobody
        will take them now."""
        for message in self._backlog.pop(name, []):
            if message.get("type") == m.RESPAWNED:
                self._stop_unwanted(name, message.get("pid"))

    def _stop_unwanted(self, name: str, pid: object) -> None:
        """Stop ``pid``, a process the launcher restarted as ``name`` that no instance
        wants (it was stopped or replaced meanwhile)."""
        if not isinstance(pid, int) or self._owned(pid):
            return
        parsed = parse_launcher_name(name)
        service = self._core.services.get(parsed[0]) if parsed else None
        self._core.events.emit(parsed[0] if parsed else "", "stop",
                               f"stopping pid {pid}: the launcher restarted it after it was "
                               "no longer wanted", instance=parsed[1] if parsed else None,
                               pid=pid)
        self._core.effects.terminate_pid(pid, service.spec if service else None)

    def _drop(self, inst: Instance) -> _Held | None:
        held = self._held.pop(inst.launcher_name, None)
        if held is not None and held.cooldown is not None:
            held.cooldown.cancel()
        return held

    def _owned(self, pid: int) -> bool:
        return any(i.pid == pid for s in self._core.services.values()
                   for i in (*s.instances.values(), *s.retiring.values()))

    def _send(self, pid: int, order: StandingOrder | None) -> None:
        launcher = self._core.launcher
        if launcher is None:
            return
        on_exit = None if order is None else order.wire()
        try:
            reply = launcher.send_request({"type": m.ORDER, "pid": pid, "on_exit": on_exit})
        except Exception:  # the connection is closed: the supervisor is going away
            return
        # NoSuchProcess: the process ended first; its Exited says what the launcher did.
        reply.add_done_callback(lambda done: done.exception())


def _ms(decision: policy.Decision) -> int:
    return round(decision.delay * 1000)


def _order(decision: policy.Decision | None) -> StandingOrder | None:
    """The one-exit order (protocol 1.2) of ``decision``."""
    return None if decision is None else StandingOrder(_ms(decision))

