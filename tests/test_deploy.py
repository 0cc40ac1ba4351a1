"""The deployment files in deploy/: systemd units, tmpfiles.d and sysusers.d snippets, and the crontab.

Each file is checked by the tool that will read it on a real host (systemd-analyze, systemd-tmpfiles,
systemd-sysusers, /bin/sh under cron's empty environment, and a real cron daemon), with the install
paths (/opt/fsqueue/venv, /opt/agents, /var/lib/fsqueue) pointed at this checkout and temp directories.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import secrets
import select
import shutil
import stat
import subprocess
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import IN_CI

from fsqueue import Queue

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SYSTEMD = DEPLOY / "systemd"
CRONTAB = DEPLOY / "cron" / "crontab.example"
INSTALLED_BIN = "/opt/fsqueue/venv/bin"
VENV_BIN = sysconfig.get_path("scripts")  # where this interpreter's console scripts live
WAIT = 60.0
CRON_WAIT = 150.0  # cron runs a new line at the next minute boundary (or the one after, if it read it late)


def need_tool(name: str) -> str:
    """The path of a systemd tool; the test is skipped on a host without it."""
    path = shutil.which(name) or next((p for p in (f"/usr/bin/{name}", f"/bin/{name}") if os.access(p, os.X_OK)), None)
    if path is None:
        pytest.skip(f"{name} is not installed (it comes with systemd)")
    return path


def need_root(why: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"needs root: {why}")


# -- systemd units ------------------------------------------------------------------------------------

UNITS = sorted(p.name for p in SYSTEMD.iterdir() if p.suffix in (".service", ".timer"))
SERVICES = [name for name in UNITS if name.endswith(".service")]


@pytest.fixture
def installed_units(tmp_path: Path) -> Path:
    """Every unit of deploy/systemd/ with ExecStart= pointing at this venv, side by side as a unit directory."""
    assert (Path(VENV_BIN) / "fsqueue-watchdog").exists(), f"console scripts are not installed in {VENV_BIN}"
    directory = tmp_path / "units"
    directory.mkdir()
    for name in UNITS:
        text = (SYSTEMD / name).read_text()
        (directory / name).write_text(text.replace(f"{INSTALLED_BIN}/", f"{VENV_BIN}/"))
    return directory


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` of one unit file, stdout and stderr together."""
    analyze = need_tool("systemd-analyze")
    usage = subprocess.run([analyze, "--help"], capture_output=True, text=True, timeout=WAIT).stdout
    # --man=no: whether this host has the man pages named in Documentation= is not the unit's fault.
    # --recursive-errors=no: only this unit is judged, not the host's targets it is wanted by.
    # (Both exist since systemd 250; an older systemd-analyze simply checks more.)
    options = [option for option in ("--man=no", "--recursive-errors=no") if option.split("=")[0] in usage]
    return subprocess.run(
        [analyze, "verify", *options, str(unit)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=WAIT,
        env=dict(os.environ, SYSTEMD_LOG_COLOR="0", SYSTEMD_PAGER=""),
    )


@pytest.mark.parametrize("unit", UNITS)
def test_unit_passes_systemd_analyze_verify_without_a_warning(installed_units: Path, unit: str) -> None:
    """systemd-analyze verify accepts the unit with no output at all (bad values are warnings with exit 0)."""
    for line in (installed_units / unit).read_text().splitlines():
        if line.startswith("ExecStart="):
            assert os.access(line.split("=", 1)[1].split()[0], os.X_OK), line
    done = verify(installed_units / unit)
    assert (done.returncode, done.stdout) == (0, ""), done.stdout


def test_systemd_analyze_reports_a_bad_value_only_as_a_warning(installed_units: Path) -> None:
    """A misspelt key and a bad value are printed as warnings (exit 0 by default): hence the empty-output rule."""
    unit = installed_units / "fsqueue-watchdog.service"
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystem=stric\nProtectSytem=strict"))
    done = verify(unit)
    assert "ignoring: stric" in done.stdout and "Unknown key 'ProtectSytem'" in done.stdout, done.stdout


#: Directives that need no comment of their own: every service has them and they say what they are.
SELF_EXPLAINING = {"Type", "ExecStart", "User", "Group"}


def uncommented_directives(text: str, section: str = "Service") -> list[str]:
    """Directive lines of ``[section]`` with no comment line between them and the previous directive or header.

    The rule: each ``Key=value`` line (other than the SELF_EXPLAINING keys) needs at least one ``#``
    comment line in the run of lines above it that ends at the previous directive or section header. A
    comment above a group of directives therefore explains only the first of them.
    """
    missing = []
    current = None
    commented = False
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            current, commented = line[1:-1], False
        elif line.startswith(("#", ";")):
            commented = True
        else:
            key = line.split("=", 1)[0].strip()
            if current == section and key not in SELF_EXPLAINING and not commented:
                missing.append(f"{number}: {line}")
            commented = False
    return missing


def test_comment_rule_is_enforced_as_documented() -> None:
    """The comment rule flags a directive that follows another directive directly, and only that one."""
    unit = "[Unit]\nDescription=x\n[Service]\nType=simple\n# why\nA=1\nB=2\n\n# why not\n\nC=3\nUser=u\n"
    assert uncommented_directives(unit) == ["7: B=2"]


@pytest.mark.parametrize("unit", SERVICES)
def test_every_non_default_service_line_carries_a_comment(unit: str) -> None:
    """Each directive in [Service] of a .service file has its own comment (style: a comment on every line)."""
    assert uncommented_directives((SYSTEMD / unit).read_text()) == []


# -- tmpfiles.d and sysusers.d ------------------------------------------------------------------------


def account_ids(root: Path, name: str) -> tuple[int, int]:
    """(uid, gid) of ``name`` from ``root``'s own /etc/passwd and /etc/group."""
    users = {f[0]: f for f in (line.split(":") for line in (root / "etc/passwd").read_text().splitlines())}
    groups = {f[0]: f for f in (line.split(":") for line in (root / "etc/group").read_text().splitlines())}
    assert name in users and name in groups, (root / "etc/passwd").read_text()
    return int(users[name][2]), int(groups[name][2])


@pytest.fixture
def image() -> Iterator[Path]:
    """A system image with only what sysusers.d and tmpfiles.d create from the deploy snippets.

    It lives in a directory that other accounts may traverse (pytest's own temp tree is private to root).
    """
    sysusers, tmpfiles = need_tool("systemd-sysusers"), need_tool("systemd-tmpfiles")
    need_root("systemd-tmpfiles chowns to the fsqueue account")
    base = Path(tempfile.mkdtemp(prefix="fsqueue-image-"))
    try:
        base.chmod(0o755)
        (base / "etc").mkdir()  # sysusers writes passwd/group here; it does not create etc/
        for argv in (
            [sysusers, f"--root={base}", str(SYSTEMD / "fsqueue.sysusers.conf")],
            [tmpfiles, "--create", f"--root={base}", str(SYSTEMD / "fsqueue.tmpfiles.conf")],
        ):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=WAIT)
            assert done.returncode == 0, (argv, done.stdout, done.stderr)
        yield base
    finally:
        shutil.rmtree(base)


def test_tmpfiles_creates_the_queue_root_for_the_sysusers_account(image: Path) -> None:
    """sysusers creates the fsqueue account; tmpfiles then creates var/lib/fsqueue as fsqueue:fsqueue 2770."""
    uid, gid = account_ids(image, "fsqueue")
    st = os.lstat(image / "var/lib/fsqueue")
    assert stat.S_ISDIR(st.st_mode)
    assert oct(stat.S_IMODE(st.st_mode)) == oct(0o2770)
    assert (st.st_uid, st.st_gid) == (uid, gid)
    assert uid != 0
    etc = os.lstat(image / "etc/fsqueue")
    assert (oct(stat.S_IMODE(etc.st_mode)), etc.st_uid, etc.st_gid) == (oct(0o755), 0, 0)


def as_account(uid: int, gid: int, umask: int, action: Callable[[], object]) -> str:
    """Run ``action`` in a forked child that dropped to ``uid`` with only group ``gid``; "" or its error."""
    # The child may not read this interpreter's files (they may sit under a private home directory):
    # load now what fsqueue would otherwise import lazily.
    importlib.import_module("encodings.ascii")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover  # the child reports through the pipe and never returns into pytest
        message = b""
        try:
            os.setgroups([gid])
            os.setgid(gid)
            os.setuid(uid)
            os.umask(umask)
            action()
        except BaseException as exc:  # whatever it is, the parent reports it
            message = f"{type(exc).__name__}: {exc}".encode()
        os.write(write_end, message)
        os._exit(0)
    os.close(write_end)
    try:
        chunks = []
        while chunk := os.read(read_end, 65536):
            chunks.append(chunk)
    finally:
        os.close(read_end)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    return b"".join(chunks).decode()


AGENTS_UIDS = (64123, 64124)  # two agent accounts in the fsqueue group (numeric uids need no passwd entry)


def test_agents_in_the_fsqueue_group_can_share_the_root(image: Path) -> None:
    """Agent accounts in the fsqueue group can enqueue, claim and complete in the root the deploy files set up."""
    uid, gid = account_ids(image, "fsqueue")
    root = image / "var/lib/fsqueue"

    def initialise() -> None:
        Queue(root, create=True)  # `sudo -u fsqueue fsqueue init`

    def produce() -> None:
        Queue(root).enqueue({"n": 1}, id="shared")

    def consume() -> None:
        claim = Queue(root).claim("agent")
        assert claim is not None, "nothing to claim"
        claim.complete("ok")

    assert as_account(uid, gid, 0o022, initialise) == ""
    assert as_account(AGENTS_UIDS[0], gid, 0o022, produce) == ""
    assert as_account(AGENTS_UIDS[1], gid, 0o022, consume) == ""
    assert Queue(root).task("shared").state == "done"


# -- the crontab --------------------------------------------------------------------------------------

_SCHEDULE_FIELD = re.compile(r"(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*")
_ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)")


def parse_crontab(text: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """The variable assignments and the (five-field schedule, command) lines of a user crontab."""
    variables: dict[str, str] = {}
    jobs: list[tuple[str, str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if match := _ASSIGNMENT.fullmatch(line):
            variables[match.group(1)] = match.group(2)
            continue
        fields = line.split(None, 5)
        assert len(fields) == 6 and all(_SCHEDULE_FIELD.fullmatch(f) for f in fields[:5]), f"not a cron line: {line}"
        jobs.append((" ".join(fields[:5]), fields[5]))
    return variables, jobs


CRON_VARIABLES, CRON_JOBS = parse_crontab(CRONTAB.read_text())

# The agents named in the crontab, replaced by small scripts: payload JSON on stdin, result JSON out.
SCRAPER = """#!/usr/bin/env python3
import json, sys
payload = json.load(sys.stdin)
print(json.dumps({"scraped": payload}))
"""
WRITER = """#!/bin/sh
payload=$(cat)
printf '{"written": %s}\\n' "$payload"
"""
AGENTS = {"/opt/agents/scraper.py": ("scraper.py", SCRAPER), "/opt/agents/writer.sh": ("writer.sh", WRITER)}


def write_agents(directory: Path) -> dict[str, str]:
    """Write the stand-in agents; returns the crontab path each one replaces."""
    paths = {}
    for installed, (name, text) in AGENTS.items():
        path = directory / name
        path.write_text(text)
        path.chmod(0o755)
        paths[installed] = str(path)
    return paths


def cron_environment(root: Path) -> dict[str, str]:
    """The crontab's variables with the install paths pointed at this venv and a test queue."""
    env = dict(CRON_VARIABLES)
    assert INSTALLED_BIN in env["PATH"].split(":"), env
    env["PATH"] = env["PATH"].replace(INSTALLED_BIN, VENV_BIN)
    env["FSQUEUE_ROOT"] = str(root)
    return env


def cron_command(command: str, agents: dict[str, str]) -> str:
    for installed, path in agents.items():
        command = command.replace(installed, path)
    assert "/opt/" not in command, f"an install path the test does not know: {command}"
    assert "%" not in command, "cron turns % into a newline; escape it as \\%"
    return command


def test_crontab_sets_what_fsqueue_needs() -> None:
    """The crontab sets SHELL, a PATH that starts with the venv, and FSQUEUE_ROOT; its schedules parse."""
    assert CRON_VARIABLES["SHELL"] == "/bin/sh"
    assert CRON_VARIABLES["PATH"].split(":")[0] == INSTALLED_BIN
    assert CRON_VARIABLES["FSQUEUE_ROOT"] == "/var/lib/fsqueue"
    assert any("fsqueue run" in command for _, command in CRON_JOBS)


def job_id(job: tuple[str, str]) -> str:
    command = job[1].split()
    return command[command.index("--agent") + 1] if "--agent" in command else command[0]


@pytest.mark.parametrize("job", CRON_JOBS, ids=[job_id(job) for job in CRON_JOBS])
def test_crontab_line_runs_silently_under_cron_environment(tmp_path: Path, job: tuple[str, str]) -> None:
    """Each crontab command succeeds under `env -i` with only the crontab's variables, no TTY, and prints nothing."""
    root = tmp_path / "queue"
    env = cron_environment(root)
    clean = ["env", "-i", *(f"{k}={v}" for k, v in env.items())]
    init = subprocess.run([*clean, "fsqueue", "init"], capture_output=True, text=True, timeout=WAIT)
    assert (init.returncode, init.stdout, init.stderr) == (0, "", "")
    queue = Queue(root)
    agents = write_agents(tmp_path)
    ids = {name: queue.enqueue({"for": name}, id=f"task-{name}") for name in ("scraper", "writer")}
    command = cron_command(job[1], agents)
    done = subprocess.run(
        [*clean, env["SHELL"], "-c", command],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=WAIT,
        start_new_session=True,  # no controlling terminal, as under cron
        cwd=tmp_path,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), command
    results = {name: queue.task(task_id) for name, task_id in ids.items()}
    if "fsqueue run" not in command:
        assert {name: info.state for name, info in results.items()} == {"scraper": "pending", "writer": "pending"}
        return
    runs = min(int(command.split("--max-tasks")[1].split()[0]), len(ids))
    finished = [info for info in results.values() if info.state == "done"]
    assert len(finished) == runs, {name: info.state for name, info in results.items()}
    key = {"scraper": "scraped", "writer": "written"}[job_id(job)]
    for info in finished:
        assert info.result == {key: info.payload}, info.result


# -- a real cron daemon -------------------------------------------------------------------------------


def cron_binary() -> str | None:
    return shutil.which("cron") or next((p for p in ("/usr/sbin/cron", "/sbin/cron") if os.access(p, os.X_OK)), None)


def running_cron() -> int | None:
    """The pid of a cron daemon already running on this host (from its pid file), or None."""
    for pid_file in ("/run/crond.pid", "/var/run/crond.pid"):
        try:
            pid = int(Path(pid_file).read_text().split()[0])
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except (OSError, ValueError, IndexError):
            continue
        if comm in ("cron", "crond"):
            return pid
    return None


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A FIFO held open read-write by the test, so cron jobs can open it for writing and reads never see EOF."""
    path = tmp_path / "signal.fifo"
    os.mkfifo(path, 0o600)
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    try:
        yield path, fd
    finally:
        os.close(fd)
        path.unlink()  # a late run of the line then finds no FIFO and writes nothing


def read_fifo_lines(fd: int, count: int, deadline: float, also: list[int]) -> list[str]:
    """``count`` lines from the FIFO before ``deadline``; fails at once if a descriptor in ``also`` closes."""
    data = b""
    while data.count(b"\n") < count:
        left = deadline - time.monotonic()
        readable, _, _ = select.select([fd, *also], [], [], max(0.0, left))
        if not readable:
            pytest.fail(f"cron did not run the line within {CRON_WAIT:.0f}s; FIFO got {data!r}")
        for ready in readable:
            chunk = os.read(ready, 65536)
            if ready == fd:
                data += chunk
            elif not chunk:
                also.remove(ready)  # our cron exited: another cron holds the pid file and runs the line
    return data.decode().splitlines()[:count]


# Takes up to a minute or two: cron runs a line only at a minute boundary. `-m "not stress"` leaves it
# out together with the other long real-process tests.
@pytest.mark.stress
def test_real_cron_daemon_runs_an_fsqueue_run_line(tmp_path: Path, fifo: tuple[Path, int]) -> None:
    """A real cron daemon runs the crontab's `fsqueue run` line from /etc/cron.d and the task ends done."""
    cron = cron_binary()
    if cron is None:
        if IN_CI:
            pytest.fail("cron is not installed; CI must install it (apt-get install cron) to run this test")
        pytest.skip("cron is not installed (apt-get install cron); CI installs it and runs this test")
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("this test writes /etc/cron.d and must run as root in CI")
        pytest.skip("needs root to write /etc/cron.d")
    fifo_path, fifo_fd = fifo
    root = tmp_path / "queue"
    task_id = Queue(root, create=True).enqueue({"for": "cron"}, id="from-cron")
    agent = tmp_path / "agent.sh"
    agent.write_text(
        "#!/bin/sh\n"
        "payload=$(cat)\n"
        f'[ -p {fifo_path} ] && echo "ran $FSQUEUE_TASK_ID" > {fifo_path}\n'
        'printf \'{"scraped": %s}\\n\' "$payload"\n'
    )
    agent.chmod(0o755)
    env = cron_environment(root)
    (schedule, command) = next(job for job in CRON_JOBS if "fsqueue run" in job[1])
    command = cron_command(command, {installed: str(agent) for installed in AGENTS})
    line = f'{command}; status=$?; [ -p {fifo_path} ] && echo "exit $status" > {fifo_path}'
    assert schedule.split()[0] == "*", "the test waits for a line that runs every minute"
    entry = Path("/etc/cron.d") / f"fsqueue-test-{secrets.token_hex(4)}"  # cron ignores names with dots
    text = "".join(f"{k}={v}\n" for k, v in env.items()) + f"* * * * * root {line}\n"
    started: subprocess.Popen[bytes] | None = None
    try:
        descriptor = os.open(entry, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.chmod(entry, 0o644)  # cron skips files writable by group or others, whatever the umask did
        also: list[int] = []
        if running_cron() is None:
            # In the foreground (-f) it stays our child: stopped and reaped below, never left behind.
            started = subprocess.Popen([cron, "-f"], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
            assert started.stderr is not None
            also.append(started.stderr.fileno())
        ran, finished = read_fifo_lines(fifo_fd, 2, time.monotonic() + CRON_WAIT, also)
    finally:
        entry.unlink(missing_ok=True)
        if started is not None:
            started.terminate()
            started.wait(timeout=WAIT)
            if started.stderr is not None:
                started.stderr.close()
    assert ran == f"ran {task_id}"
    assert finished == "exit 0"
    info = Queue(root).task(task_id)
    assert info.state == "done"
    assert info.result == {"scraped": {"for": "cron"}}
    assert json.loads((root / "done" / f"{task_id}.json").read_text())["agent"] == "scraper"
