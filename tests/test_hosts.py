"""The simulated-hosts harness (tests/hosts.py) itself: hosts are distinct machines (hostname,
private local disk, a shared folder, ssh between them), a real two-host horovodrun allreduces
across them, and nothing of a run is left once it is closed. Real namespaces and sshds, no mocks;
skipped (with the reason) where hosts cannot be made (not root, no sshd, no namespaces)."""
import os
import time
import subprocess

import pytest

from hosts import Hosts, leftovers, unavailable_reason

PROGRAM = ("import horovod.mxnet as hvd, mxnet as mx, socket; hvd.init(); "
           "x = hvd.allreduce(mx.nd.array([hvd.rank() + 1]), average=False); "
           "print('RESULT', hvd.rank(), socket.gethostname(), x.asscalar(), flush=True)")


def skip_unless_available():
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def hosts():
    skip_unless_available()
    with Hosts(2) as h:
        yield h
    assert_nothing_left(h)


def assert_nothing_left(h):
    """Checked with the system's own tools, not with the harness's bookkeeping."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    with open("/etc/hosts") as f:
        etc_hosts = f.read()
    with open("/proc/self/mountinfo") as f:
        mounts = f.read()
    prefixes = ["rh%s-" % h.tag, "rhv%s-" % h.tag, "rhb%s" % h.tag]
    assert not [l for l in netns.splitlines() if l.startswith(tuple(prefixes))], netns
    assert not [l for l in links.splitlines() if any(": %s" % p in l for p in prefixes)], links
    assert "recognition-test-hosts %s" % h.tag not in etc_hosts, etc_hosts
    assert not any(n in etc_hosts for n in h.names), etc_hosts
    assert not [l for l in ps.splitlines() if h.run_dir in l or any(n in l for n in h.names)], ps
    assert h.run_dir not in mounts and "/run/netns/rh%s-" % h.tag not in mounts, mounts
    assert not os.path.exists(h.run_dir)
    assert leftovers(h.tag) == []
    for pid in (a.pid for a in h.anchors):
        assert not os.path.exists("/proc/%d" % pid)  # reaped, not a zombie


def test_hosts_are_distinct_machines(hosts):
    names = [hosts.run(i, ["hostname"]).stdout.strip() for i in range(2)]
    assert names == hosts.names and names[0] != names[1]

    # the private local disk: same path on both hosts, different content, not in the root namespace
    wrote = hosts.run(0, "echo from-host-0 > %s/probe && cat %s/probe" % (hosts.disk, hosts.disk))
    assert wrote.returncode == 0 and wrote.stdout.strip() == "from-host-0", wrote.stderr
    assert hosts.run(1, ["test", "-e", os.path.join(hosts.disk, "probe")]).returncode == 1
    assert not os.path.exists(os.path.join(hosts.disk, "probe"))
    with open(hosts.host_path(0, os.path.join(hosts.disk, "probe"))) as f:
        assert f.read() == "from-host-0\n"
    assert not os.path.exists(hosts.host_path(1, os.path.join(hosts.disk, "probe")))

    # the shared folder: written on host 0, read on host 1 and outside
    assert hosts.run(0, "echo both > %s/s" % hosts.shared).returncode == 0
    assert hosts.run(1, ["cat", os.path.join(hosts.shared, "s")]).stdout == "both\n"
    assert open(os.path.join(hosts.shared, "s")).read() == "both\n"

    # ssh from host 0 to host 1 through the run's wrapper (first on PATH); lands on host 1's disk
    ssh = hosts.run(0, ["ssh", hosts.names[1], "hostname; ls -A %s" % hosts.disk], timeout=30)
    assert ssh.returncode == 0, ssh.stderr
    assert ssh.stdout.split() == [hosts.names[1]]
    assert hosts.pids(0) == [] and hosts.pids(1) == []  # only the anchors, and they are left out


def test_horovodrun_across_two_hosts(hosts):
    proc = hosts.horovodrun(["-c", PROGRAM], slots=(1, 1), timeout=120, env={"OMP_NUM_THREADS": "1"})
    said = proc.stdout + proc.stderr
    assert proc.returncode == 0, said[-4000:]
    results = sorted(line.split("RESULT ", 1)[1].split() for line in said.splitlines() if "RESULT " in line)
    assert [r[0] for r in results] == ["0", "1"], said[-4000:]
    assert [r[1] for r in results] == hosts.names  # rank 0 on host 0, rank 1 on host 1
    assert [float(r[2]) for r in results] == [3.0, 3.0]


def test_faults_and_nothing_left_after_a_messy_run():
    skip_unless_available()
    with Hosts(2) as h:
        # kill_host: every process of the host dies, its sshd stays and it is reachable again
        sleeper = h.popen(1, ["sleep", "1000"])
        deadline = time.time() + 10  # nsenter enters host 1's namespaces just after it starts
        while sleeper.pid not in h.pids(1) and time.time() < deadline:
            time.sleep(0.05)
        assert sleeper.pid in h.pids(1)
        assert h.kill_host(1) == [sleeper.pid]
        assert sleeper.wait(timeout=10) == -9 and h.pids(1) == []
        assert h.run(0, ["ssh", h.names[1], "true"], timeout=30).returncode == 0

        # partition / heal: host 1 unreachable, then reachable again
        h.partition(1)
        cut = h.run(0, ["ssh", "-o", "ConnectTimeout=2", h.names[1], "true"], timeout=30)
        assert cut.returncode == 255, cut.stdout + cut.stderr
        h.heal(1)
        assert h.run(0, ["ssh", h.names[1], "true"], timeout=30).returncode == 0

        # leave a mess: a detached process started through ssh, a running popen, a file on a
        # private disk, an open ssh session, host 1 cut off
        detached = "setsid sleep 1000 </dev/null >/dev/null 2>&1 &"
        assert h.run(0, ["ssh", h.names[1], detached], timeout=30).returncode == 0
        h.popen(0, ["sleep", "1000"])
        session = h.popen(0, ["ssh", h.names[1], "sleep 1000"])
        assert h.run(1, "echo x > %s/file" % h.disk).returncode == 0
        deadline = 50
        while len(h.pids(1)) < 3 and deadline:  # the detached sleep, the session's sshd and shell
            deadline -= 1
            session.poll()
            time.sleep(0.1)
        assert len(h.pids(1)) >= 2, h.pids(1)
        h.partition(1)
    assert_nothing_left(h)
    h.close()  # idempotent
