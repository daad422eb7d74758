"""Several simulated hosts on this one machine, for multi-host tests and benchmarks.

A real cluster differs from ``horovodrun -H localhost:2`` in ways that matter to the trainer: each
host has its own network address and hostname, its own local disk (``output.dir`` on one host is
not the same folder as on another, although the path is the same), a shared file system next to
it, and horovodrun reaches the other hosts through ssh. ``Hosts(count)`` makes ``count`` such hosts
with Linux namespaces (root only) and removes every trace of them on ``close()``:

* network: one network namespace per host (``rh<pid>-<n>``), its ``eth0`` a veth pair joined to a
  per-run bridge (``rhb<pid>``) in the root namespace; ``lo`` is up. Addresses come only from
  198.18.0.0/15 (the benchmarking range, never routed): ``198.<18|19>.<k>.<10+i>/24``, ``k``
  from the pid; the root namespace gets no address, so traffic only flows between the hosts.
  Horovod needs this: gloo advertises the address of ``--network-interface eth0``.
* hostname: a UTS namespace per host (``rhost<pid>-<n>``), resolvable from every host through a
  tagged line in /etc/hosts (``# recognition-test-hosts <pid>``). Horovod needs distinct
  hostnames: with one shared hostname gloo advertises 127.0.0.1 and the job fails at start.
* local disk: a mount namespace per host with a private tmpfs at the same path on every host
  (``Hosts.disk``); ``shared`` is a plain folder that every host sees. ``host_path(i, path)`` shows a
  host's files from outside (through ``/proc/<anchor>/root``).
* ssh: each host runs its own sshd (per-run host keys, client key, known_hosts), started as
  ``ip netns exec NS unshare --uts --mount sh -c 'hostname; mount tmpfs; exec sshd'``. That sshd
  is the host's *anchor*: everything started through ssh, and everything ``Hosts.run`` starts with
  ``nsenter -t <anchor> -n -u -m``, is on that host (its network, hostname and disk). The client
  side is a wrapper ``<run>/bin/ssh`` (``/usr/bin/ssh -F <run>/ssh/config``) first on the PATH of
  ``Hosts.env()``, so horovodrun's own ssh calls use it; root's ~/.ssh is never touched.
* faults: ``kill_host`` (every process of a host but its sshd, i.e. all of its training
  processes), ``partition``/``heal`` (the host's link down/up).

horovodrun on these hosts (``Hosts.horovodrun``): it runs on host 0 with ``--gloo
--network-interface eth0 -p 22 --disable-cache`` (no ~/.horovod). Host 0's ranks are its own
children, the others' run under ssh, so a rank killed on another host is reported by horovodrun
as exit code 255 (ssh's), not 137; a partitioned host is noticed when ssh's keep-alive gives up
(ServerAliveInterval 5 x 3: about 15-20 s), and its ranks keep running on it until ``close()``.

Hosts are numbered ``i = 0 .. count-1`` in the API; their names count from 1 (``rhost<pid>-1`` is
host 0, where ``horovodrun`` runs). Leaving nothing behind is part of the contract: ``close()``
(also from ``__exit__``, ``atexit`` and a SIGTERM handler) kills every process of every host,
deletes namespaces, links and the bridge, the /etc/hosts lines and the run folder, then checks
that nothing of the run is left (``leftovers()``); ``cleanup_stale()`` removes what a run whose
process is gone left behind and is called whenever ``Hosts`` start.
"""
import atexit
import fcntl
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SSHD = "/usr/sbin/sshd"
SSH = "/usr/bin/ssh"
SSH_PORT = 22  # each host has its own network namespace: the standard port is free on all
ETC_HOSTS = "/etc/hosts"
TAG = "# recognition-test-hosts"
RUN_PREFIX = "recognition-hosts-"
NETNS_RE = re.compile(r"^rh(\d+)-\d+$")           # rh<pid>-<n> (n = 0: unavailable_reason's probe)
LINK_RE = re.compile(r"^rh[bv](\d+)(?:-\d+)?$")   # rhb<pid> (bridge), rhv<pid>-<n> (veth, root end)
RUN_RE = re.compile(re.escape(RUN_PREFIX) + r"(\d+)(?:/|$)")

_open = []            # Hosts not closed yet, for atexit and SIGTERM
_handlers = {}        # whether the atexit hook / SIGTERM handler are installed


def _sh(*argv, check=True, timeout=30):
    """Run a setup/cleanup command in the root namespace; raise with its output on failure."""
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(map(str, argv)), proc.returncode,
                                                   (proc.stdout + proc.stderr).strip()))
    return proc


def _run_dir(tag):
    return os.path.join(tempfile.gettempdir(), RUN_PREFIX + str(tag))


def _start_time(pid):
    """The start time of process ``pid`` (clock ticks since boot), None when there is none."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _venv_bin(name):
    path = os.path.join(os.path.dirname(sys.executable), name)
    return path if os.path.exists(path) else shutil.which(name)


@functools.lru_cache(maxsize=None)
def unavailable_reason():
    """None when hosts can be made here; otherwise why not (for ``pytest.skip``)."""
    if os.geteuid() != 0:
        return "simulated hosts need root (network, UTS and mount namespaces)"
    for tool in ("ip", "unshare", "nsenter", "ssh-keygen", "mount", "hostname"):
        if shutil.which(tool) is None:
            return "simulated hosts need `%s` (iproute2, util-linux, openssh-client)" % tool
    for path in (SSHD, SSH):
        if not os.access(path, os.X_OK):
            return "simulated hosts need %s (openssh-server, openssh-client)" % path
    probe = "rh%d-0" % os.getpid()
    try:
        _sh("ip", "netns", "add", probe)
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        return "cannot create a network namespace: %s" % e
    try:
        _sh("ip", "link", "add", "rhv%d-0" % os.getpid(), "type", "veth", "peer", "name", "eth0",
            "netns", probe)
        _sh("ip", "netns", "exec", probe, "unshare", "--uts", "--mount", "true")
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        return "cannot set up a simulated host: %s" % e
    finally:
        _sh("ip", "link", "del", "rhv%d-0" % os.getpid(), check=False)
        _sh("ip", "netns", "del", probe, check=False)
    return None


# --- finding and removing what a run made (one routine for close() and for stale runs) --------

def _netns_names():
    out = _sh("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _link_names():
    out = _sh("ip", "-o", "link", "show", check=False).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]


def _netns_pids(ns):
    out = _sh("ip", "netns", "pids", ns, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def _cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _all_pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _hosts_lines(tag):
    with open(ETC_HOSTS) as f:
        return [line for line in f if line.rstrip().endswith("%s %s" % (TAG, tag))]


def _edit_hosts(drop_tag=None, add=()):
    """Remove the lines tagged ``drop_tag`` from /etc/hosts and append ``add``, under a lock (runs
    in other processes edit it too); the file is rewritten in place (it may be a bind mount)."""
    with open(ETC_HOSTS, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            lines = f.readlines()
            mine = "%s %s" % (TAG, drop_tag)
            kept = [l for l in lines if drop_tag is None or not l.rstrip().endswith(mine)]
            if kept and not kept[-1].endswith("\n"):
                kept[-1] += "\n"
            kept += list(add)
            if kept != lines:
                f.seek(0)
                f.write("".join(kept))
                f.truncate()
                f.flush()
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run_pids(tag):
    """Every process of run ``tag``: those in its network namespaces and any whose command line
    names its run folder (an sshd whose namespace lost its name, a wrapper, ...)."""
    pids = set()
    for ns in _netns_names():
        m = NETNS_RE.match(ns)
        if m and m.group(1) == str(tag):
            pids.update(_netns_pids(ns))
    marker = RUN_PREFIX + str(tag) + "/"
    for pid in _all_pids():
        if marker in _cmdline(pid):
            pids.add(pid)
    pids.discard(os.getpid())
    return pids


def leftovers(tag):
    """Descriptions of anything of run ``tag`` still there (namespaces, links, /etc/hosts lines,
    processes, mounts, the run folder); empty when it is all gone."""
    tag = str(tag)
    found = ["netns " + n for n in _netns_names() if (NETNS_RE.match(n) or [None, None])[1] == tag]
    found += ["link " + n for n in _link_names() if (LINK_RE.match(n) or [None, None])[1] == tag]
    found += ["/etc/hosts: " + l.strip() for l in _hosts_lines(tag)]
    found += ["process %d: %s" % (p, _cmdline(p)) for p in sorted(_run_pids(tag))]
    run_dir = _run_dir(tag)
    with open("/proc/self/mountinfo") as f:
        found += ["mount: " + l.strip() for l in f
                  if run_dir in l or "/run/netns/rh%s-" % tag in l]
    if os.path.lexists(run_dir):
        found.append("folder " + run_dir)
    return found


def _remove_run(tag, children=()):
    """Remove everything of run ``tag``; ``children`` are our Popen objects of it (reaped)."""
    tag = str(tag)
    deadline = time.time() + 10
    while True:  # SIGKILL until no process is left: an sshd may still be forking a session
        pids = _run_pids(tag)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for child in children:
            if child.poll() is None:
                try:
                    child.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    pass
        if not pids or time.time() > deadline:
            break
        time.sleep(0.05)
    for child in children:  # no zombies of ours
        try:
            child.kill()
            child.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
    try:
        _edit_hosts(drop_tag=tag)
    except OSError:
        pass
    for name in _link_names():
        m = LINK_RE.match(name)
        if m and m.group(1) == tag and name.startswith("rhv"):
            _sh("ip", "link", "del", name, check=False)
    for name in _link_names():
        m = LINK_RE.match(name)
        if m and m.group(1) == tag:
            _sh("ip", "link", "del", name, check=False)
    for ns in _netns_names():
        m = NETNS_RE.match(ns)
        if m and m.group(1) == tag:
            _sh("ip", "netns", "del", ns, check=False)
    shutil.rmtree(_run_dir(tag), ignore_errors=True)


def _is_stale(tag):
    pid = int(tag)
    started = _start_time(pid)
    if started is None:
        return True
    try:  # the pid was reused by another process since the run recorded its start time
        with open(os.path.join(_run_dir(tag), "owner")) as f:
            return f.read().split()[1] != started
    except (OSError, IndexError):
        return False


def cleanup_stale(include_own=False):
    """Remove the namespaces, links, bridges, /etc/hosts lines, sshds and run folders of earlier
    runs whose process is gone (``include_own``: also this process's, when it has no open Hosts)."""
    tags = set()
    tags.update(m.group(1) for m in map(NETNS_RE.match, _netns_names()) if m)
    tags.update(m.group(1) for m in map(LINK_RE.match, _link_names()) if m)
    with open(ETC_HOSTS) as f:
        tags.update(m.group(1) for m in re.finditer(re.escape(TAG) + r" (\d+)\s*$", f.read(), re.M))
    for entry in os.listdir(tempfile.gettempdir()):
        m = RUN_RE.match(entry)
        if m and entry == RUN_PREFIX + m.group(1):
            tags.add(m.group(1))
    for pid in _all_pids():
        m = RUN_RE.search(_cmdline(pid))
        if m:
            tags.add(m.group(1))
    own = str(os.getpid())
    for tag in sorted(tags):
        if (tag == own and include_own and not _open) or (tag != own and _is_stale(tag)):
            _remove_run(tag)


def _close_all_open():
    for hosts in list(_open):
        try:
            hosts.close(raise_leftovers=False)
        except Exception as e:  # at exit or on SIGTERM: clean what can be cleaned, say what not
            print("tests/hosts.py: cleanup failed: %r" % e, file=sys.stderr)


def _on_sigterm(signum, frame):
    _close_all_open()
    previous = _handlers.get("sigterm_previous", signal.SIG_DFL)
    signal.signal(signal.SIGTERM, previous)
    _handlers.pop("sigterm", None)
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        os.kill(os.getpid(), signal.SIGTERM)  # the default action: terminate, as without us


def _install_handlers():
    if "atexit" not in _handlers:
        atexit.register(_close_all_open)
        _handlers["atexit"] = True
    if "sigterm" not in _handlers:
        try:
            previous = signal.getsignal(signal.SIGTERM)
            if previous != signal.SIG_IGN:
                signal.signal(signal.SIGTERM, _on_sigterm)
                _handlers["sigterm_previous"] = previous
                _handlers["sigterm"] = True
        except ValueError:  # not the main thread: __exit__ and atexit still clean up
            pass


class Hosts:
    """``count`` simulated hosts (see the module docstring); a context manager.

    names: hostnames (``rhost<pid>-1`` ...); addresses: their eth0 addresses; disk: the path of
    every host's private local disk (a tmpfs, same path, different content); shared: a folder all
    hosts (and the root namespace) see; run_dir: where keys, configs and logs are.
    """

    def __init__(self, count=2, disk_size="512m", start_timeout=20):
        reason = unavailable_reason()
        if reason is not None:
            raise RuntimeError(reason)
        if _open:
            raise RuntimeError("one Hosts per process at a time (names are made from the pid)")
        if not 1 <= count <= 200:
            raise ValueError("count must be 1..200")
        self.count = count
        self.tag = str(os.getpid())
        k = os.getpid() % 512
        self._net = "198.%d.%d" % (18 + k // 256, k % 256)
        self.names = ["rhost%s-%d" % (self.tag, i + 1) for i in range(count)]
        self.addresses = ["%s.%d" % (self._net, 10 + i) for i in range(count)]
        self.netns = ["rh%s-%d" % (self.tag, i + 1) for i in range(count)]
        self._veths = ["rhv%s-%d" % (self.tag, i + 1) for i in range(count)]
        self._bridge = "rhb" + self.tag
        self.run_dir = _run_dir(self.tag)
        self.disk = os.path.join(self.run_dir, "disk")
        self.shared = os.path.join(self.run_dir, "shared")
        self.bin_dir = os.path.join(self.run_dir, "bin")
        self.anchors = []     # Popen of each host's sshd
        self._children = []   # our Popen objects on the hosts (reaped on close)
        self._closed = False
        cleanup_stale(include_own=True)
        _open.append(self)
        _install_handlers()
        try:
            self._start(disk_size, start_timeout)
        except BaseException:
            self.close(raise_leftovers=False)
            raise

    # --- setup -------------------------------------------------------------------------------

    def _start(self, disk_size, start_timeout):
        run = self.run_dir
        ssh_dir = os.path.join(run, "ssh")
        for d in (run, self.disk, self.shared, self.bin_dir, ssh_dir):
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(run, "owner"), "w") as f:
            f.write("%s %s\n" % (self.tag, _start_time(os.getpid())))
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation folder

        key = os.path.join(ssh_dir, "id_ed25519")
        _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "recognition-hosts", "-f", key)
        shutil.copy(key + ".pub", os.path.join(ssh_dir, "authorized_keys"))
        config = os.path.join(ssh_dir, "config")
        with open(config, "w") as f:
            f.write("Host *\n  User root\n  Port %d\n  IdentityFile %s\n  IdentitiesOnly yes\n"
                    "  UserKnownHostsFile %s\n  GlobalKnownHostsFile /dev/null\n"
                    "  StrictHostKeyChecking no\n  LogLevel ERROR\n  BatchMode yes\n"
                    "  ConnectTimeout 10\n  ServerAliveInterval 5\n  ServerAliveCountMax 3\n"
                    % (SSH_PORT, key, os.path.join(ssh_dir, "known_hosts")))
        wrapper = os.path.join(self.bin_dir, "ssh")
        with open(wrapper, "w") as f:
            f.write('#!/bin/sh\nexec %s -F %s "$@"\n' % (SSH, config))
        os.chmod(wrapper, 0o755)

        _sh("ip", "link", "add", self._bridge, "type", "bridge", "forward_delay", "0")
        _sh("ip", "link", "set", self._bridge, "up")
        _edit_hosts(add=["%s %s %s %s\n" % (a, n, TAG, self.tag)
                         for a, n in zip(self.addresses, self.names)])
        for i in range(self.count):
            ns, veth = self.netns[i], self._veths[i]
            _sh("ip", "netns", "add", ns)
            _sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _sh("ip", "link", "set", veth, "master", self._bridge, "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
            _sh("ip", "-n", ns, "addr", "add", self.addresses[i] + "/24", "dev", "eth0")
            _sh("ip", "-n", ns, "link", "set", "eth0", "up")
            self.anchors.append(self._start_sshd(i, disk_size))
        deadline = time.time() + start_timeout
        for i in range(self.count):
            self._wait_listening(i, deadline)
        for i in range(self.count):  # every host reachable from host 0 through ssh: ready
            while True:
                proc = self.run(0, ["ssh", self.names[i], "true"], timeout=15)
                if proc.returncode == 0:
                    break
                if time.time() > deadline:
                    raise RuntimeError("ssh %s -> %s failed: %s\n%s" % (
                        self.names[0], self.names[i], proc.stdout + proc.stderr, self._log(i)))
                time.sleep(0.2)

    def _start_sshd(self, i, disk_size):
        host_dir = os.path.join(self.run_dir, "host%d" % (i + 1))
        os.makedirs(host_dir)
        host_key = os.path.join(host_dir, "ssh_host_ed25519_key")
        _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", self.names[i], "-f", host_key)
        config = os.path.join(host_dir, "sshd_config")
        with open(config, "w") as f:
            f.write("ListenAddress %s\nPort %d\nHostKey %s\nPidFile %s\n"
                    "AuthorizedKeysFile %s\nPermitRootLogin prohibit-password\n"
                    "PubkeyAuthentication yes\nPasswordAuthentication no\nStrictModes no\n"
                    "UsePAM no\nUseDNS no\nPrintMotd no\nPrintLastLog no\nX11Forwarding no\n"
                    "MaxStartups 100\nMaxSessions 100\nLogLevel INFO\n"
                    # as cluster sshds are commonly set: a session whose client is gone (a
                    # partition) ends after ~15 s instead of lingering until TCP gives up (hours)
                    "ClientAliveInterval 5\nClientAliveCountMax 3\n"
                    % (self.addresses[i], SSH_PORT, host_key, os.path.join(host_dir, "sshd.pid"),
                       os.path.join(self.run_dir, "ssh", "authorized_keys")))
        script = ('set -e; hostname "$1"; mount -t tmpfs -o size=%s,mode=0755 tmpfs "$2"; '
                  'exec %s -D -e -f "$3"' % (disk_size, SSHD))
        with open(os.path.join(host_dir, "sshd.log"), "w") as log:
            # ip netns exec and unshare exec (no fork): the Popen's pid is the sshd itself
            return subprocess.Popen(
                ["ip", "netns", "exec", self.netns[i], "unshare", "--uts", "--mount",
                 "--propagation", "private", "sh", "-c", script, "sh", self.names[i], self.disk,
                 config], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    def _log(self, i):
        try:
            with open(os.path.join(self.run_dir, "host%d" % (i + 1), "sshd.log")) as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def _wait_listening(self, i, deadline):
        while "Server listening on" not in self._log(i):
            if self.anchors[i].poll() is not None or time.time() > deadline:
                raise RuntimeError("sshd of %s did not start: %s" % (self.names[i], self._log(i)))
            time.sleep(0.05)

    # --- use -----------------------------------------------------------------------------------

    def env(self, extra=None):
        """os.environ with the run's ssh wrapper and the venv's bin first on PATH, plus ``extra``."""
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([self.bin_dir, os.path.dirname(sys.executable),
                                       env.get("PATH", "/usr/bin:/bin")])
        env.update(extra or {})
        return env

    def _argv(self, i, argv, cwd):
        if isinstance(argv, str):
            argv = ["sh", "-c", argv]
        # entering a mount namespace moves to its root: cd there (a path, resolved on the host)
        return ["nsenter", "-t", str(self.anchors[i].pid), "-n", "-u", "-m", "--",
                "sh", "-c", 'cd "$0" && exec "$@"', cwd] + [str(a) for a in argv]

    def run(self, i, argv, env=None, timeout=120, cwd=ROOT, input=None):
        """Run ``argv`` (a list, or a string for ``sh -c``) on host ``i``; text output captured.
        ``env``: the full environment (default ``self.env()``)."""
        return subprocess.run(self._argv(i, argv, cwd), env=self.env() if env is None else env,
                              capture_output=True, text=True, timeout=timeout, input=input)

    def popen(self, i, argv, env=None, cwd=ROOT, **kw):
        """Start ``argv`` on host ``i``; ``kw`` go to subprocess.Popen. Killed on close()."""
        proc = subprocess.Popen(self._argv(i, argv, cwd), env=self.env() if env is None else env, **kw)
        self._children.append(proc)
        return proc

    def horovodrun_argv(self, args, slots=(1, 1), extra=()):
        """The horovodrun command line (run on host 0) for ``python args...`` with ``slots[j]``
        processes on host j."""
        if len(slots) > self.count:
            raise ValueError("%d hosts, %d slot counts" % (self.count, len(slots)))
        horovodrun = _venv_bin("horovodrun")
        if horovodrun is None:
            raise RuntimeError("horovodrun not found next to %s" % sys.executable)
        hosts = ",".join("%s:%d" % (self.names[j], s) for j, s in enumerate(slots) if s > 0)
        # --disable-cache: no ~/.horovod; --network-interface eth0: gloo and the driver use the
        # hosts' addresses; -p: horovodrun's ssh port (also in the wrapper's config)
        return [horovodrun, "-np", str(sum(slots)), "-H", hosts, "--gloo", "--network-interface",
                "eth0", "-p", str(SSH_PORT), "--disable-cache", *extra, sys.executable,
                *[str(a) for a in args]]

    def horovodrun_elastic_argv(self, args, discovery_script, np, min_np, max_np, extra=()):
        """The elastic horovodrun command line: hosts and slots from ``discovery_script`` (run by
        horovodrun on host 0; it prints ``NAME:SLOTS`` lines) instead of ``-H``."""
        argv = self.horovodrun_argv(args, (1,), extra)
        at = argv.index("-H")
        argv[1:at + 2] = ["-np", str(np), "--min-np", str(min_np), "--max-np", str(max_np),
                          "--host-discovery-script", discovery_script]
        return argv

    def horovodrun(self, args, slots=(1, 1), timeout=300, env=None, extra=(), cwd=ROOT):
        """Run a real multi-host ``horovodrun ... python args...`` on host 0 and wait for it.
        ``env``: extra variables on top of ``self.env()`` (horovodrun passes them to every rank)."""
        return self.run(0, self.horovodrun_argv(args, slots, extra), env=self.env(env),
                        timeout=timeout, cwd=cwd)

    def horovodrun_popen(self, args, slots=(1, 1), env=None, extra=(), cwd=ROOT, **kw):
        """``horovodrun`` without waiting (for fault tests); ``kw`` go to subprocess.Popen."""
        return self.popen(0, self.horovodrun_argv(args, slots, extra), env=self.env(env), cwd=cwd, **kw)

    def pids(self, i):
        """The processes of host ``i`` (its network namespace), its sshd anchor excluded."""
        return [p for p in _netns_pids(self.netns[i]) if p != self.anchors[i].pid]

    def kill_host(self, i, sig=signal.SIGKILL):
        """Send ``sig`` to every process of host ``i`` but its sshd: all of its training processes
        (and ssh sessions) die, the host itself stays reachable. Returns the pids signalled."""
        pids = self.pids(i)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return pids

    def partition(self, i):
        """Cut host ``i`` off the network (its link down at the bridge); established connections
        stall instead of being reset, as when a cable or switch fails."""
        _sh("ip", "link", "set", self._veths[i], "down")

    def heal(self, i):
        """Undo ``partition(i)``."""
        _sh("ip", "link", "set", self._veths[i], "up")

    def host_path(self, i, path):
        """``path`` as host ``i`` sees it (its private disk included), readable from outside."""
        return "/proc/%d/root%s" % (self.anchors[i].pid, os.path.abspath(path))

    def leftovers(self):
        return leftovers(self.tag)

    def close(self, raise_leftovers=True):
        """Remove everything of the run (idempotent); raise if something could not be removed."""
        if self._closed:
            return
        self._closed = True
        try:
            _remove_run(self.tag, children=self._children + self.anchors)
        finally:
            if self in _open:
                _open.remove(self)
        left = leftovers(self.tag)
        if left and raise_leftovers:
            raise RuntimeError("simulated hosts left behind: %s" % left)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
