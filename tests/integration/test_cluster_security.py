"""``corral sup run`` against an etcd that wants TLS with a client certificate and a user
and password, as an operator would set it up: both supervisors join and see each other,
the password reaches neither the status, the events, the logs nor the services, and each
way of getting it wrong is one line at start with nothing started."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import Corral, wait_for
from .etcd_fixtures import EtcdMember, Pki
from .test_etcd_security import PASSWORD, enable_auth

pytestmark = pytest.mark.slow


def census_members(c: Corral, group: str) -> set[str]:
    data: dict[str, Any] = json.loads(c.ok("census", "--json"))
    return {m["member"] for m in data["groups"].get(group, []) if m["alive"]}


def test_sup_run_joins_over_tls_with_a_password(tmp_path: Path,
                                                 etcd_factory: Callable[..., EtcdMember]) -> None:
    pki = Pki(tmp_path / "pki")
    member = etcd_factory(tls=pki)
    member.start()
    member.wait_healthy()
    enable_auth(member)
    tls = ("--cluster", member.url, "--cluster-ca", str(pki.ca),
           "--cluster-cert", str(pki.client_cert), "--cluster-key", str(pki.client_key),
           "--cluster-user", "corral", "--advertise", "127.0.0.1", "--cluster-ttl", "2")
    password_file = tmp_path / "etcd-password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    spec = tmp_path / "web.yaml"
    spec.write_text("name: web\ncommand: [sh, -c, 'env; exec sleep 3600']\n"
                    "start_seconds: 0\ncluster: {group: prod}\n")

    for name in ("alpha", "beta"):
        (tmp_path / name).mkdir()
    made: list[Corral] = []
    try:
        # One reads the password from the environment, the other from a file.
        alpha = Corral(tmp_path / "alpha" / "state")
        made.append(alpha)
        alpha.start(*tls, "--member-name", "alpha", env={"CORRAL_CLUSTER_PASSWORD": PASSWORD})
        beta = Corral(tmp_path / "beta" / "state")
        made.append(beta)
        beta.start(*tls, "--member-name", "beta", "--cluster-password-file", str(password_file))
        for c in (alpha, beta):
            c.ok("svc", "load", "-f", str(spec))
            c.wait_state("web", "up")
        for c in (alpha, beta):
            wait_for(lambda c=c: census_members(c, "web.prod") == {"alpha", "beta"},
                     what="both members in the census")
            link = c.sup_status()["cluster"]
            assert link["backend"] == "etcd" and link["connected"]
            assert link["endpoints"] == [member.url]

        # The password is nowhere a user or a service can read it.
        seen = [alpha.ok("sup", "status"), alpha.ok("sup", "status", "--json"),
                alpha.ok("events", "-n", "1000"), alpha.ok("logs", "web"),
                alpha.ok("census", "--json"), beta.ok("sup", "status", "--json")]
        for state in (alpha.state_dir, beta.state_dir):
            seen += [p.read_text(errors="replace") for p in state.rglob("*")
                     if p.is_file() and not p.is_socket()]
        assert not [text for text in seen if PASSWORD in text]
    finally:
        for c in made:
            c.stop()

    # Each way of getting it wrong: one line, nothing started.
    wrong_password = tmp_path / "wrong"
    wrong_password.write_text("nope\n")
    cases: list[tuple[tuple[str, ...], str]] = [
        ((*tls, "--cluster-password-file", str(wrong_password)),
         "etcd refused user 'corral': wrong user name or password"),
        (tuple(a for a in tls if a not in ("--cluster-user", "corral")),
         "etcd requires authentication"),
        (("--cluster", member.url, "--cluster-ca", str(pki.ca), "--cluster-user", "corral",
          "--cluster-password-file", str(password_file)), "client certificate"),
        (("--cluster", member.url, "--cluster-cert", str(pki.client_cert),
          "--cluster-key", str(pki.client_key), "--cluster-user", "corral",
          "--cluster-password-file", str(password_file)), "check the CA"),
    ]
    for i, (flags, expected) in enumerate(cases):
        state = tmp_path / f"bad{i}" / "state"
        state.parent.mkdir()
        result = Corral(state).run("sup", "run", "--state-dir", str(state), *flags, timeout=60)
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0, flags
        assert len(lines) == 1 and lines[0].startswith("corral: ") and expected in lines[0], \
            (flags, result.stderr)
        assert PASSWORD not in result.stderr
        assert not (state / "api.sock").exists()
