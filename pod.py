"""What happens to the RunPod pod around a training run: the plan train.sh prints at launch, the run itself (the
prep, training, then the pod's end), and train.sh's wait for training's first step.

train.sh calls it four times; nothing of the training code imports it:

    python pod.py plan --log-dir DIR [--log FILE] [--foreground] [--keep-pod] [--no-pod-check]
    python pod.py env
    python pod.py run --log-dir DIR --log FILE --since BYTES [--prep=ARG ...] [--attended-by PID] [--foreground]
                      [--keep-pod] -- TRAINING COMMAND
    python pod.py wait --log-dir DIR --since BYTES --pid PID --log FILE --log-offset BYTES [--keep-pod]

`plan` refuses a launch onto a log dir whose run is still going (that launch changes nothing, the pod included),
says what will happen to the pod when training ends, and checks that runpodctl can reach the pod; it refuses a
detached launch that could not end the pod. `env` prints the RUNPOD_* variables of /etc/rp_environment that the
environment lacks (KEY=value, each ended by a NUL byte), for train.sh to export to training. `wait` is what train.sh
becomes once training runs in the background (PID, its child; not with --prep): it shows the background run's lines of
the log (from --log-offset on, less torchrun's own records and tracebacks) until the first optimizer step, then says
how to follow and stop training and exits 0. When training ends before that, it says why (the trainer's
`train_gpt2.py:` line, or the log's last lines) and exits non-zero; Ctrl-C is passed on to training (SIGINT to its
process group), waited for, and exits 130; a hangup just ends the wait, and training goes on. `run` is the launch
itself, in the background (its output is the log) or --foreground (its output goes to the terminal and the log): it
runs the prep command (--prep, one argument each), then training unless the prep failed or was stopped, noting the
first stop signal it gets (the commands get it too: training saves a checkpoint), then `end`s the pod, and exits with
training's code. `end` (also alone: python pod.py end --exit-code N --since BYTES [--signal INT|TERM|HUP] ...)
decides, from how training ended, what happens to the pod, carries it out and writes every runpodctl answer to the
log.

Whether a launch trained: the trainer appends one {"event": "train", ...} line to LOG_DIR/metrics.jsonl after every
optimizer step (rank 0 only; the file is only ever appended to; the preflight writes none). A launch trained when
metrics.jsonl gained a train event after the size in bytes it had at launch, which train.sh measures after the
preflight, right before training starts (0 when there is no file), and passes on as --since. Someone is at the
terminal while `wait` runs (its pid is --attended-by) and in a --foreground run that no hangup (SIGHUP) ended.

What happens to the pod when training ends, by where the log dir is (symlinks resolved):
  on a network volume (under /workspace, RUNPOD_VOLUME_ID set)
      training finished, failed, or was stopped with kill   the pod is removed: the volume keeps the log and
                                                            checkpoints, and ./train.sh on a new pod continues
      removing fails                                        the pod is stopped instead
  on the pod's volume disk (under /workspace, no network volume)
      training finished, failed, or was stopped with kill   the pod is stopped: removing it would delete
                                                            /workspace; start it again to get your files
      stopping fails                                        the pod is left running, and the log says so
  outside /workspace (on the container disk, which stopping or removing the pod wipes)
      a detached launch is refused (unless --keep-pod); a --foreground run leaves the pod running
  training ended before its first optimizer step (whatever its exit code: refused options, already trained, ...)
      someone at the terminal                               the pod is left as it was; the terminal says why
      nobody (--prep, or a hangup ended the wait)           as when training failed (above), the log saying why
  Ctrl-C in a --foreground run or while train.sh waits      the pod is left running: you are at the keyboard
  another run holds the log dir, so training never started  the pod is left running for that run
  --keep-pod                                                the pod is left running
  not a RunPod pod (no RUNPOD_POD_ID)                       nothing

RunPod's variables: RUNPOD_POD_ID (the pod), RUNPOD_VOLUME_ID (set when a network volume is mounted at /workspace)
and RUNPOD_API_KEY (runpodctl's key). RunPod writes them to /etc/rp_environment as `export KEY="value"` lines and
sources that file from ~/.bashrc, which `ssh pod ./train.sh`, cron or tmux scripts may never read. When
RUNPOD_POD_ID is not set, the RUNPOD_* lines of the file are read as data (the file is never run); variables already
set are kept.

runpodctl, the internals this module relies on:
  - v2 (`runpodctl pod get|stop|delete ID`) prints the pod as JSON on stdout ("desiredStatus": "RUNNING", "EXITED";
    a delete prints "deleted": true). Errors are {"error": "..."} on stderr, exit 1; a pod that is gone is a
    "status 404" error. v2 still runs the v1 forms below, after a deprecation warning.
  - v1 (`runpodctl get|stop|remove pod ID`) prints tables: `get pod ID` lists the account's pods, tab-separated, and
    keeps the row of ID (its last column is the status); a pod it cannot see is a table without rows, exit 0. v1
    knows no `pod` command ("unknown command"): that answer is how the generation is found, once per process.
  - v1's `stop pod` exits 0 even when the pod did not stop: it prints `pod "ID" stop failed; status is RUNNING`. So
    no exit code is taken for an answer: after a stop or remove, `get` must show the pod EXITED or gone, and the
    request is tried again after 15, 30, 60 and 120 s while it is not.
  - v1 puts the API key into the URL of its network errors: every answer is logged with the key blanked out.
  - A missing or refused key ("api key", status 401 or 403, v1's {"data":{"myself":null}}) is not tried again.
Each runpodctl call may take 120 s at most.

Options for tests: POD_RP_ENVIRONMENT, POD_WORKSPACE and POD_RETRY_DELAYS set the defaults of --rp-environment,
--workspace and --retry-delays.
"""

import argparse
import contextlib
import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common import HelpFormatter

CALL_TIMEOUT = 120  # seconds one runpodctl call may take
POLL = 0.1  # seconds between looks at the log while train.sh waits for the first step

# Where the log dir is -> what ending a run does to the pod, and why. The plan, the end and the docstring say it.
FATES = {
    "network": ("remove", "the volume keeps the log and checkpoints, and ./train.sh on a new pod with it continues"),
    "volume": ("stop", "removing it would delete {workspace}: start it again to get your files, then remove it"),
    "container": ("", "stopping or removing it would wipe the log dir: copy your files off, then stop it"),
}
DONE = {"remove": "removed", "stop": "stopped", "": "left running"}
DOING = {"remove": "removing pod {}", "stop": "stopping pod {}", "": "keeping pod {} running"}


class PodError(Exception):
    """A launch that must not go ahead; main() prints it as one line."""


class Tee:
    """The output of a --foreground run: the terminal and the log. After a hangup the terminal is gone; the log goes
    on."""

    def __init__(self, log: str):
        self.log, self.terminal = open(log, "ab", buffering=0), sys.stdout.buffer

    def write(self, data: bytes) -> None:
        self.log.write(data)
        if self.terminal:
            try:
                self.terminal.write(data)
                self.terminal.flush()
            except OSError:
                self.terminal = None


TEE: Tee | None = None  # set by `run --foreground`


def say(line: str) -> None:
    """A line for the terminal or the log (both in a --foreground run). After a hangup the terminal is gone: the pod
    is dealt with all the same."""
    if TEE:
        TEE.write(f"{line}\n".encode())
        return
    try:
        print(line, flush=True)
    except OSError:
        pass


# ----------------------------------------------------------------------------------------------------------------------
# RunPod's variables, the log dir's storage and its lock

def read_rp_environment(path: str) -> dict[str, str]:
    """The RUNPOD_* variables of `export KEY="value"` lines, quotes taken off; nothing in the file runs."""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return {}
    found = {}
    for line in lines:
        m = re.fullmatch(r"\s*(?:export )?(RUNPOD_[A-Z0-9_]*)=(.*)", line)
        if m:
            value = m[2]
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            found[m[1]] = value
    return found


def missing_from_environment(path: str) -> dict[str, str]:
    """The file's RUNPOD_* variables this environment lacks, when it has no RUNPOD_POD_ID (the file went unread)."""
    if os.environ.get("RUNPOD_POD_ID"):
        return {}
    return {k: v for k, v in read_rp_environment(path).items() if k not in os.environ}


@dataclass
class Pod:
    """This machine's pod (id "" when it is none) and where the run's log dir is."""
    id: str
    volume_id: str
    api_key: str
    log_dir: Path  # symlinks resolved
    workspace: Path
    from_file: dict[str, str]  # the RUNPOD_* variables read from the rp_environment file, for runpodctl too

    @property
    def storage(self) -> str:
        """network (under the workspace, a network volume attached), volume (the pod's volume disk) or container."""
        if not self.log_dir.is_relative_to(self.workspace):
            return "container"
        return "network" if self.volume_id else "volume"

    @property
    def where(self) -> str:
        return {"network": f"on the network volume {self.volume_id}",
                "volume": "on the pod's volume disk (no network volume: RUNPOD_VOLUME_ID is not set)",
                "container": f"outside {self.workspace}, on the container disk"}[self.storage]

    def fate(self) -> tuple[str, str]:
        """(remove, stop or "": what ending a run does to the pod, why)."""
        action, why = FATES[self.storage]
        return action, why.format(workspace=self.workspace)


def find_pod(args: argparse.Namespace) -> Pod:
    added = missing_from_environment(args.rp_environment)
    env = {**added, **os.environ}
    return Pod(env.get("RUNPOD_POD_ID", ""), env.get("RUNPOD_VOLUME_ID", ""), env.get("RUNPOD_API_KEY", ""),
               Path(args.log_dir).resolve(), Path(args.workspace).resolve(), added)


def lock_holder(log_dir: str) -> str:
    """Who holds LOG_DIR/.lock, the flock of a live train_gpt2.py run (checkpoints.lock_log_dir writes "pid N on HOST"
    into it); "" when it is free."""
    try:
        fd = os.open(Path(log_dir) / ".lock", os.O_RDONLY)
    except OSError:
        return ""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return ""
    except BlockingIOError:
        return os.read(fd, 200).decode(errors="replace").strip() or "a run starting up"
    except OSError:
        return ""
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------------------------------
# runpodctl, v2 or v1

@dataclass
class Answer:
    cmd: str
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return (self.out + self.err).rstrip("\n")


class Runpodctl:
    """runpodctl for one pod: v2's command forms until runpodctl says it does not know them, then v1's. Every answer
    is said, indented, with the API key blanked out."""

    def __init__(self, pod: Pod, say: Callable[[str], None] = say):
        self.pod, self.say, self.version = pod, say, 0

    def _run(self, argv: list[str]) -> Answer:
        cmd = "runpodctl " + " ".join(argv)
        try:
            p = subprocess.run(["runpodctl", *argv], capture_output=True, text=True, errors="replace",
                               stdin=subprocess.DEVNULL, timeout=CALL_TIMEOUT, env={**os.environ, **self.pod.from_file})
            code, out, err = p.returncode, p.stdout, p.stderr
        except subprocess.TimeoutExpired:
            code, out, err = 124, "", f"(no answer within {CALL_TIMEOUT} s)\n"
        except OSError as e:
            code, out, err = 127, "", f"{e}\n"
        if self.pod.api_key:
            out, err = (s.replace(self.pod.api_key, "<RUNPOD_API_KEY>") for s in (out, err))
        return Answer(cmd, code, out, err)

    def call(self, verb: str, tell: bool = True) -> Answer:
        """get, stop or remove the pod; tell: say the answer."""
        if self.version != 1:
            answer = self._run(["pod", "delete" if verb == "remove" else verb, self.pod.id])
            self.version = 1 if answer.code and "unknown command" in answer.text.lower() else 2
        if self.version == 1:
            answer = self._run([verb, "pod", self.pod.id])
        if tell:
            self.tell(answer)
        return answer

    def tell(self, answer: Answer) -> None:
        self.say(f"pod.py: {answer.cmd} -> exit {answer.code}")
        for line in answer.text.splitlines():
            self.say(f"    {line}")

    def json(self, answer: Answer) -> dict:
        try:
            value = json.loads(answer.out)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def status(self, answer: Answer) -> str:
        """The pod's status in an answer ("" when it names none): v2's "desiredStatus", or the last column of v1's
        table row for the pod."""
        if self.version == 2:
            return str(self.json(answer).get("desiredStatus") or "")
        for line in answer.out.splitlines():
            cols = line.split()
            if len(cols) > 1 and cols[0].lower() == self.pod.id.lower():
                return cols[-1]
        return ""

    def claims_done(self, action: str, answer: Answer) -> bool:
        """Whether runpodctl's answer to stop or remove says it happened (to be confirmed by the status)."""
        if answer.code:
            return False
        if self.version == 1:
            return f'pod "{self.pod.id}" {DONE[action]}' in answer.out  # not `stop failed; status is RUNNING`
        if action == "stop":
            return self.status(answer) == "EXITED"
        return self.json(answer).get("deleted") is True


def key_refused(answer: Answer) -> bool:
    """The API key is missing or refused: trying again will not help."""
    return re.search(r'api key|status 40[13]|statuscode 40[13]|"myself":null', answer.text, re.I) is not None


def confirm(ctl: Runpodctl, action: str) -> bool:
    """After runpodctl said it stopped or removed the pod: whether the pod's status agrees. When the status cannot be
    read now, runpodctl's answer stands."""
    pod, answer = ctl.pod.id, ctl.call("get")
    status = ctl.status(answer)
    gone = status == "TERMINATED" or (not status and (answer.code == 0 or "status 404" in answer.text))
    if (action == "remove" and gone) or (action == "stop" and status == "EXITED"):
        ctl.say(f"pod.py: done: pod {pod} is {DONE[action]}")
        return True
    if status:
        ctl.say(f"pod.py: runpodctl answered as if it worked, but pod {pod} is {status}")
        return False
    ctl.say(f"pod.py: done, going by runpodctl's answer: pod {pod} is {DONE[action]} (its status could not be read)")
    return True


def carry_out(ctl: Runpodctl, action: str, delays: list[float]) -> bool:
    """Stop or remove the pod until runpodctl's answer and then the pod's status say it happened, waiting longer before
    each new try; False when that never happened."""
    pod, tries = ctl.pod.id, 0
    while True:
        tries += 1
        answer = ctl.call(action)
        if ctl.claims_done(action, answer):
            if confirm(ctl, action):
                return True
        elif key_refused(answer):
            ctl.say("pod.py: runpodctl's API key is missing or refused - trying again will not help")
            return False
        if tries > len(delays):
            ctl.say(f"pod.py: pod {pod} is not {DONE[action]} after {tries} tries")
            return False
        ctl.say(f"pod.py: pod {pod} is not {DONE[action]} (try {tries}) - trying again in {delays[tries - 1]:g} s")
        time.sleep(delays[tries - 1])


# ----------------------------------------------------------------------------------------------------------------------
# whether a launch trained, and whether someone watches it

def trained_since(log_dir: str, since: int) -> bool:
    """Whether LOG_DIR/metrics.jsonl has a train event after byte `since`, its size at launch (the whole file when it
    is shorter now: it was replaced). A line still being written is not read as one."""
    try:
        with open(Path(log_dir) / "metrics.jsonl", "rb") as f:
            f.seek(since if os.fstat(f.fileno()).st_size >= since else 0)
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get("event") == "train":
                    return True
    except OSError:
        pass
    return False


def alive(pid: int) -> bool:
    """Whether process pid runs (a zombie, ended but not yet waited for, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc here
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def attended(args: argparse.Namespace) -> bool:
    """Someone is at the terminal: a --foreground run that no hangup ended, or train.sh still waiting for the first
    step (--attended-by: the pid of `pod.py wait`)."""
    if args.foreground:
        return args.signal != "HUP"
    return args.attended_by is not None and alive(args.attended_by)


# ----------------------------------------------------------------------------------------------------------------------
# train.sh's wait for the first step

# torchrun's own log records, e.g. `W0612 10:00:00.675000 8466 torch/distributed/run.py:874] Setting OMP_NUM_THREADS`
TORCHRUN_RECORD = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ")


class LogTail:
    """The whole lines a log file gains from a byte offset on, for the terminal: less torchrun's own log records and
    tracebacks (torch.distributed.elastic's exceptions: a stop signal; a worker failed, with a report after it - the
    worker's own lines say why), and each `train_gpt2.py:` line once (every rank says it)."""

    def __init__(self, path: str, offset: int):
        self.path, self.offset, self.rest = path, offset, b""
        self.held: list[str] = []  # a traceback, until its last line says whose it is
        self.report_rules = 0  # the ===== lines of torchrun's report still to skip
        self.said: set[str] = set()

    def read(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        self.offset += len(data)
        *lines, self.rest = (self.rest + data).split(b"\n")
        return [line.decode(errors="replace").rstrip("\r") for line in lines]

    def lines(self, final: bool = False) -> list[str]:
        """The new lines to show; final: the writer has ended, so a held traceback is shown too."""
        shown = []
        for line in self.read():
            if self.report_rules:
                self.report_rules -= bool(line) and set(line) == {"="}
            elif line == "Traceback (most recent call last):" or (self.held and line[:1] in ("", " ")):
                self.held.append(line)
            elif self.held and line.startswith("torch.distributed.elastic."):
                self.held, self.report_rules = [], 2 * ("ChildFailedError" in line)
            elif not TORCHRUN_RECORD.match(line) and line not in self.said:
                shown += self.held + [line]
                self.held = []
                if line.startswith("train_gpt2.py: "):
                    self.said.add(line)
        if final:
            shown, self.held = shown + self.held, []
        return shown


def reaped(pid: int) -> int | None:
    """The exit code of child process pid once it has ended (128 + N for signal N), else None."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not this process's child (or waited for already): its exit code is lost, 1 says so
        return None if alive(pid) else 1
    if not done:
        return None
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def why_untrained(log: str, offset: int) -> list[str]:
    """Why a launch ended before its first step, from its log (from offset on): the trainer's `train_gpt2.py:` lines
    other than notices and warnings, each once; when there is none, the log's last lines."""
    with open(log, "rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").splitlines()
    said = [line for line in lines if line.startswith("train_gpt2.py: ")
            and not line.startswith(("train_gpt2.py: notice:", "train_gpt2.py: warning:"))]
    if said:
        return list(dict.fromkeys(said))
    return [line for line in lines if not line.startswith(("train.sh: ", "pod.py: "))][-12:]


def wait(args: argparse.Namespace) -> int:
    """Show the log until training's first optimizer step, then leave it running and return 0; see the docstring for
    the other ways it ends. args.pid must be this process's child."""
    ctrl_c = []
    signal.signal(signal.SIGINT, lambda signum, frame: ctrl_c.append(signum))
    tail, pod, stopping = LogTail(args.log, args.log_offset), find_pod(args), 0
    say(f"train.sh: waiting for training's first step (compile, evals at step 0) - the log: tail -f "
        f"{shlex.quote(args.log)}")
    while True:
        # in this order, so that the lines shown include all that came before the step's event or the run's end
        code = reaped(args.pid)
        trained = trained_since(args.log_dir, args.since)
        for line in tail.lines(final=code is not None):
            say(line)
        if len(ctrl_c) > stopping and code is None:  # each Ctrl-C goes on to training, as in a --foreground run
            if not stopping:
                say("train.sh: Ctrl-C: stopping training, waiting for it to end")
            stopping = len(ctrl_c)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(args.pid, signal.SIGINT)
        if code is not None or (trained and not stopping):
            break
        time.sleep(POLL)
    kept = f"pod {pod.id} is left as it was - " if pod.id else ""
    if stopping:
        when = "just after its first step (it saves a checkpoint when stopped)" if trained else \
            "before its first step: nothing trained"
        print(f"train.sh: training was stopped by Ctrl-C {when}; {kept}the log: {args.log}", file=sys.stderr)
        return 130
    if trained and code is None:
        say(f"train.sh: training runs in the background (pid {args.pid}, stop it with: kill -- -{args.pid}), "
            f"logging to {args.log}")
        say(f"train.sh: follow it with: tail -f {shlex.quote(args.log)}")
        return 0
    if trained:
        say(f"train.sh: training made its first step and has ended already (exit code {code}) - the log: {args.log}")
        return code
    for line in why_untrained(args.log, args.log_offset):
        print(line, file=sys.stderr)
    print(f"train.sh: training ended before its first optimizer step (exit code {code}): nothing trained; "
          f"{kept}the log: {args.log}", file=sys.stderr)
    return code or 1


# ----------------------------------------------------------------------------------------------------------------------
# the launch: the prep, training, then the pod's end

def child(command: list[str]) -> int:
    """Run one command of the launch to its end, its output on this process's (through TEE in a --foreground run);
    its exit code (128 + N for signal N)."""
    say(f"train.sh: running {shlex.join(command)}")
    try:
        if TEE is None:
            code = subprocess.run(command).returncode
        else:
            with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
                for data in iter(lambda: proc.stdout.read1(65536), b""):
                    TEE.write(data)
            code = proc.returncode
    except OSError as e:
        say(f"train.sh: {command[0]}: {e.strerror}")
        return 127
    return 128 - code if code < 0 else code


def run(args: argparse.Namespace) -> int:
    """The launch, from the prep to the pod's end (see the docstring); training's exit code."""
    global TEE
    stops: list[str] = []  # the commands get the same signals (one process group) and stop; the first is noted
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: stops.append(signal.Signals(signum).name[3:]))
    os.environ["PYTHONUNBUFFERED"] = "1"
    if args.foreground:
        TEE = Tee(args.log)
        say(f"train.sh: logging to {args.log}")
    say(f"train.sh: {time.strftime('%Y-%m-%d %H:%M:%S')} on {socket.gethostname()}, log dir {args.log_dir}")
    code = child(args.prep) if args.prep else 0
    if code == 0 and not stops:
        code = child(args.train)
    args.exit_code, args.signal = code, (stops or [None])[0]
    after = f" after SIG{args.signal}" if args.signal else ""
    say(f"train.sh: {time.strftime('%Y-%m-%d %H:%M:%S')} training ended with exit code {code}{after}")
    end(args)
    return code


# ----------------------------------------------------------------------------------------------------------------------
# the plan at launch, and the end of the run

def leaves_pod(pod: Pod, args: argparse.Namespace) -> str:
    """Why the pod is left alone whatever happens ("" when it is not)."""
    if not pod.id:
        return (f"RUNPOD_POD_ID is not set (not a RunPod pod, or {args.rp_environment} has none) - no pod to stop or "
                "remove")
    if args.keep_pod:
        return f"--keep-pod: pod {pod.id} is left running whatever happens (it costs money until you stop it)"
    return ""


def reach(ctl: Runpodctl) -> str:
    """Why runpodctl cannot reach the pod now ("" when it can: the pod's status is said)."""
    pod = ctl.pod.id
    if not shutil.which("runpodctl"):
        return f"runpodctl cannot reach pod {pod}: it is not on PATH"
    answer = ctl.call("get", tell=False)
    status = ctl.status(answer)
    if answer.code == 0 and status:
        ctl.say(f"pod.py: runpodctl (v{ctl.version}) reaches pod {pod}: its status is {status}")
        return ""
    ctl.tell(answer)
    listing = f", listing no pod {pod} for its API key" if answer.code == 0 else ""
    return f"runpodctl cannot reach pod {pod}: {answer.cmd} exited with {answer.code}{listing}"


def plan(args: argparse.Namespace) -> None:
    """Say what will happen to the pod when training ends, and check runpodctl; PodError when the launch must not go
    ahead. The lines go to stdout, and to --log once the launch is accepted."""
    holder = lock_holder(args.log_dir)
    if holder:  # this launch changes nothing, the pod included
        logs = sorted(Path(args.log_dir).glob("train-*.log"), key=lambda p: p.stat().st_mtime)
        follow = logs[-1] if logs else f"{args.log_dir}/train-*.log"
        raise PodError(f"a training run is already going in {args.log_dir} ({holder}) - follow it with: tail -f "
                       f"{shlex.quote(str(follow))}; or start this one with another --log-dir")
    lines = []

    def note(line: str) -> None:
        lines.append(line)
        say(line)

    pod = find_pod(args)
    ctl = Runpodctl(pod, note)
    if leaves_pod(pod, args):
        note(f"pod.py: {leaves_pod(pod, args)}")
    else:
        action, why = pod.fate()
        if not action and not args.foreground:
            raise PodError(f"log dir {pod.log_dir} is {pod.where}, which stopping or removing pod {pod.id} wipes: "
                           f"clone the repo into {pod.workspace} (or use --log-dir there), or start with --keep-pod")
        if "RUNPOD_POD_ID" in pod.from_file:
            note(f"pod.py: RUNPOD_POD_ID and the other RUNPOD_* variables read from {args.rp_environment}")
        fallback = {"remove": "; if removing fails, it is stopped", "stop": "; if stopping fails, it is left running"}
        note(f"pod.py: log dir {pod.log_dir} is {pod.where}. When training ends:")
        note(f"pod.py:   finished, failed or stopped with kill: pod {pod.id} is {DONE[action]} ({why})"
             f"{fallback.get(action, '')}")
        note(f"pod.py:   before its first step: pod {pod.id} is left as it was while you are at the terminal, "
             "as when training failed once you are not")
        if args.foreground:
            note(f"pod.py:   Ctrl-C: pod {pod.id} is left running")
        why_not = "" if not args.pod_check else reach(ctl)
        if not args.pod_check:
            note("pod.py: --no-pod-check: runpodctl is not tried now; it is at the end")
        elif why_not and not args.foreground:
            raise PodError(f"{why_not}, so the pod could not be stopped or removed when training ends - make "
                           f"'runpodctl pod get {pod.id}' work (runpodctl on PATH, RUNPOD_API_KEY, network), or start "
                           "with --keep-pod or --no-pod-check")
        elif why_not:
            note(f"pod.py: warning: {why_not} - the pod may be left running when training ends")
    if args.log:
        with open(args.log, "a") as f:
            f.writelines(line + "\n" for line in lines)


def outcome(args: argparse.Namespace, holder: str, trained: bool, watched: bool) -> str:
    """How the launch ended, from the trainer's exit code, the stop signal train.sh noted, whether it trained (a train
    event after --since) and whether someone is at the terminal (attended()): ctrl-c (SIGINT, someone at the
    terminal), refused (training exited because another run holds the log dir), early (no optimizer step, someone at
    the terminal), early-unwatched (no optimizer step, nobody at the terminal), stopped (any other stop signal),
    failed or finished. What happens to the pod follows from this alone."""
    if args.signal == "INT" and watched:
        return "ctrl-c"
    if args.exit_code and holder:
        return "refused"
    if not trained:
        return "early" if watched else "early-unwatched"
    if args.signal:
        return "stopped"
    return "failed" if args.exit_code else "finished"


def decide(pod: Pod, args: argparse.Namespace, ended: str, holder: str) -> tuple[str, str]:
    """(remove, stop or "": what to do with the pod, the line that says why)."""
    if leaves_pod(pod, args):
        return "", leaves_pod(pod, args)
    if ended == "ctrl-c":
        return "", f"interrupted with Ctrl-C: you are at the keyboard, pod {pod.id} is left running"
    if ended == "refused":
        return "", (f"training did not start: another run ({holder}) has {args.log_dir} - "
                    f"pod {pod.id} is left running for it")
    code = f"exit code {args.exit_code}" + (f" after SIG{args.signal}" if args.signal else "")
    if ended == "early":
        return "", (f"training ended before its first optimizer step ({code}), with you at the terminal: pod "
                    f"{pod.id} is left as it was")
    how = {"finished": "training finished", "failed": f"training exited with code {args.exit_code}",
           "stopped": f"training was stopped with SIG{args.signal}",
           "early-unwatched": f"training ended before its first optimizer step ({code}) and nobody is at the terminal"}
    action, why = pod.fate()
    reason = f"{how[ended]}; log dir {pod.log_dir} is {pod.where} - {DOING[action].format(pod.id)}: {why}"
    if action == "remove" and ended != "finished":
        reason += " (a stopped pod would keep nothing more, and could find no free GPU when restarted)"
    return action, reason


def end(args: argparse.Namespace) -> None:
    """Decide what happens to the pod now that training ended, carry it out, and say each step."""
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):  # the run is over: the pod must be dealt with now
        signal.signal(sig, signal.SIG_IGN)
    pod = find_pod(args)
    holder = "" if args.signal or not args.exit_code else lock_holder(args.log_dir)
    trained = trained_since(args.log_dir, args.since)
    action, reason = decide(pod, args, outcome(args, holder, trained, attended(args)), holder)
    say(f"pod.py: {reason}")
    if not action:
        return
    if not shutil.which("runpodctl"):
        say(f"pod.py: runpodctl not found - {action} pod {pod.id} yourself in the RunPod console")
        return
    ctl = Runpodctl(pod)
    if carry_out(ctl, action, args.retry_delays):
        return
    if action == "remove":
        say(f"pod.py: removing pod {pod.id} failed - stopping it instead, so its GPUs stop costing (remove it later "
            "in the RunPod console)")
        if carry_out(ctl, "stop", args.retry_delays):
            return
    else:
        say(f"pod.py: not removing pod {pod.id} instead: that would delete {pod.log_dir}")
    say(f"pod.py: pod {pod.id} may still be running and costing money - stop or remove it in the RunPod console")


# ----------------------------------------------------------------------------------------------------------------------
# config

def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--rp-environment", default=os.environ.get("POD_RP_ENVIRONMENT") or "/etc/rp_environment",
                        help="RunPod's env file, read for RUNPOD_* when RUNPOD_POD_ID is not set")
    run = argparse.ArgumentParser(add_help=False, parents=[common])
    run.add_argument("--log-dir", required=True, help="the run's log dir (train_gpt2.py --log-dir)")
    run.add_argument("--workspace", default=os.environ.get("POD_WORKSPACE") or "/workspace",
                     help="where the pod's volume (network or its own disk) is mounted")
    run.add_argument("--foreground", action="store_true", help="train.sh --foreground: attached to a terminal")
    run.add_argument("--keep-pod", action="store_true", help="leave the pod running whatever happens")
    s = sub.add_parser("plan", parents=[run], formatter_class=HelpFormatter,
                       help="at launch: the lock, the plan for the pod, runpodctl's reach")
    s.add_argument("--log", default=None, help="append the plan to this file once the launch is accepted")
    s.add_argument("--pod-check", action=argparse.BooleanOptionalAction, default=True,
                   help="check that runpodctl reaches the pod now")
    sub.add_parser("env", parents=[common], formatter_class=HelpFormatter,
                   help="the RUNPOD_* variables from --rp-environment, KEY=value\\0 each")
    ending = argparse.ArgumentParser(add_help=False, parents=[run])
    ending.add_argument("--since", type=int, required=True,
                        help="LOG_DIR/metrics.jsonl's size in bytes at launch: a train event after it means it trained")
    ending.add_argument("--attended-by", type=int, default=None, metavar="PID",
                        help="the pid of train.sh's wait for the first step: while it runs, someone is at the terminal")
    ending.add_argument("--retry-delays", type=lambda s: [float(x) for x in s.split()],
                        default=os.environ.get("POD_RETRY_DELAYS", "15 30 60 120"),
                        help="seconds to wait before each new try of a stop or remove")
    s = sub.add_parser("run", parents=[ending], formatter_class=HelpFormatter,
                       usage="%(prog)s --log-dir DIR --log FILE --since BYTES [options] -- TRAINING COMMAND",
                       help="the launch: --prep's command, then training (after --), then the pod's end")
    s.add_argument("--log", required=True, help="the launch's log file (--foreground: its output goes there too)")
    s.add_argument("--prep", action="append", default=[], metavar="ARG",
                   help="one argument of the command that makes the data first (--prep=ARG, for each)")
    s = sub.add_parser("end", parents=[ending], formatter_class=HelpFormatter,
                       help="when training ended: decide, then stop or remove the pod")
    s.add_argument("--exit-code", type=int, required=True, help="the trainer's exit code")
    s.add_argument("--signal", choices=["INT", "TERM", "HUP"], default=None, help="the stop signal train.sh got")
    s = sub.add_parser("wait", parents=[run], formatter_class=HelpFormatter,
                       help="train.sh, once training runs in the background: its lines until the first step")
    s.add_argument("--since", type=int, required=True, help="LOG_DIR/metrics.jsonl's size in bytes at launch")
    s.add_argument("--pid", type=int, required=True, help="the background run, a child of this process")
    s.add_argument("--log", required=True, help="the background run's log file")
    s.add_argument("--log-offset", type=int, required=True,
                   help="the log's size in bytes before the background run began (what came before was shown)")
    argv = sys.argv[1:] if argv is None else argv
    cut = argv.index("--") if "--" in argv else len(argv)  # run's training command, taken as it is
    args = p.parse_args(argv[:cut])
    args.train = argv[cut + 1:]
    if args.command == "run" and not args.train:
        p.error("run needs the training command after --")
    return args


def main(argv: list[str] | None = None) -> None:
    args = get_args(argv)
    try:
        if args.command == "plan":
            plan(args)
        elif args.command == "env":
            for key, value in missing_from_environment(args.rp_environment).items():
                sys.stdout.write(f"{key}={value}\0")
        elif args.command == "wait":
            sys.exit(wait(args))
        elif args.command == "run":
            sys.exit(run(args))
        else:
            end(args)
    except PodError as e:
        print(f"pod.py: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C at launch (the end ignores it)
        print("pod.py: stopped by Ctrl-C - nothing started", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
