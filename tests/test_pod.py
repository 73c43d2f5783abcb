"""pod.py: the plan at launch and what happens to the RunPod pod when training ends.

pod.py runs as train.sh runs it, a process with options, against tests/stand_ins/runpodctl, which answers like
runpodctl v2 or v1 (see its header) from a state folder holding the pod's status and the account's API key, and
records every call. The log dir is under a /workspace stand-in; runpodctl retries do not wait.
"""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import KEY, ON_POD, ON_VOLUME, POD

ROOT = Path(__file__).resolve().parents[1]
STAND_IN_RUNPODCTL = ROOT / "tests" / "stand_ins" / "runpodctl"


@pytest.fixture
def rig(tmp_path: Path, account: SimpleNamespace) -> SimpleNamespace:
    workspace = tmp_path / "workspace"
    (workspace / "log").mkdir(parents=True)
    return SimpleNamespace(account=account, root=tmp_path, workspace=workspace, log=workspace / "log",
                           rp_environment=tmp_path / "rp_environment")


def pod_env(rig: SimpleNamespace, **env: str) -> dict[str, str]:
    """The environment for pod.py in the rig: no RUNPOD_* variables unless given, runpodctl retries without waiting."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD", "POD_"))}
    full_env.update(rig.account.env, PATH=f"{rig.account.bin}:{os.environ['PATH']}", POD_RETRY_DELAYS="0 0",
                    POD_WORKSPACE=str(rig.workspace), POD_RP_ENVIRONMENT=str(rig.rp_environment))
    full_env.update(env)
    return full_env


def pod_py(rig: SimpleNamespace, *args: str, **env: str) -> subprocess.CompletedProcess:
    """python pod.py ARGS in the rig; keyword arguments set environment variables (no RUNPOD_* unless given)."""
    return subprocess.run([sys.executable, str(ROOT / "pod.py"), *args], env=pod_env(rig, **env), capture_output=True,
                          text=True, timeout=60)


def plan(rig: SimpleNamespace, *args: str, **env: str) -> subprocess.CompletedProcess:
    return pod_py(rig, "plan", "--log-dir", str(rig.log), *args, **env)


def end(rig: SimpleNamespace, code: int = 0, *args: str, trained: bool = True,
        **env: str) -> subprocess.CompletedProcess:
    """pod.py end, for a launch that began with metrics.jsonl as it is now and trained (a train event after that) or
    not."""
    metrics = rig.log / "metrics.jsonl"
    since = metrics.stat().st_size if metrics.exists() else 0
    if trained:
        with open(metrics, "a") as f:
            f.write('{"event": "train", "step": 0, "loss": 10.9}\n')
    r = pod_py(rig, "end", "--log-dir", str(rig.log), "--exit-code", str(code), "--since", str(since), *args, **env)
    assert r.returncode == 0 and not r.stderr, r.stderr  # whatever happens to the pod, it is said on stdout
    return r


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pod.py: "), r.stderr
    return lines[0]


# --- what happens to the pod when training ends ---

def test_a_finished_run_with_the_log_dir_on_the_network_volume_removes_the_pod(rig):
    r = end(rig, 0, **ON_VOLUME)
    assert rig.account.calls() == [f"pod delete {POD}", f"pod get {POD}"] and rig.account.status() == "removed"
    assert f"removing pod {POD}" in r.stdout and f"done: pod {POD} is removed" in r.stdout
    assert '"deleted": true' in r.stdout  # runpodctl's answer is said, for the log


def test_a_failed_run_on_the_network_volume_removes_the_pod_and_says_why(rig):
    r = end(rig, 1, **ON_VOLUME)
    assert rig.account.status() == "removed"
    assert "training exited with code 1" in r.stdout and "a stopped pod would keep nothing more" in r.stdout


@pytest.mark.parametrize("code", [0, 1])
def test_a_run_on_the_pods_own_volume_disk_stops_the_pod_and_never_removes_it(rig, code):
    r = end(rig, code, **ON_POD)
    assert rig.account.calls() == [f"pod stop {POD}", f"pod get {POD}"] and rig.account.status() == "EXITED"
    assert "RUNPOD_VOLUME_ID is not set" in r.stdout and f"stopping pod {POD}" in r.stdout
    assert f"done: pod {POD} is stopped" in r.stdout


@pytest.mark.parametrize("sig", ["TERM", "HUP", "INT"])
def test_a_stop_signal_ends_the_pod_unless_it_is_ctrl_c_at_the_terminal(rig, sig):
    r = end(rig, 1, "--signal", sig, **ON_POD)  # a detached run: kill, or the group's hangup
    assert f"training was stopped with SIG{sig}" in r.stdout and rig.account.status() == "EXITED"
    (rig.account.state / "pods" / POD).write_text("RUNNING\n")
    r = end(rig, 1, "--signal", sig, "--foreground", **ON_POD)
    assert (rig.account.status() == "RUNNING") == (sig == "INT")
    assert ("interrupted with Ctrl-C" in r.stdout) == (sig == "INT")


def test_without_a_pod_id_runpodctl_is_never_called(rig):
    assert "RUNPOD_POD_ID is not set" in plan(rig, RUNPOD_VOLUME_ID="vol-1").stdout
    for code in (0, 1):
        assert "RUNPOD_POD_ID is not set" in end(rig, code, RUNPOD_VOLUME_ID="vol-1").stdout
    assert rig.account.calls() == []


def test_keep_pod_leaves_the_pod_running_and_skips_runpodctl(rig):
    assert "--keep-pod" in plan(rig, "--keep-pod", **ON_VOLUME).stdout
    for code in (0, 1):
        assert "--keep-pod" in end(rig, code, "--keep-pod", **ON_VOLUME).stdout
    assert rig.account.calls() == [] and rig.account.status() == "RUNNING"


@pytest.mark.parametrize("where", ["outside the workspace", "symlinked out of the workspace"])
def test_log_dir_off_the_volume_refuses_a_detached_launch_and_keeps_a_foreground_pod(rig, where):
    (rig.root / "container-disk").mkdir()
    if where == "outside the workspace":
        rig.log = rig.root / "container-disk"
    else:
        (rig.workspace / "log").rmdir()
        (rig.workspace / "log").symlink_to(rig.root / "container-disk")
    error = one_line_error(plan(rig, **ON_VOLUME))
    assert "outside" in error and "container disk" in error and "--keep-pod" in error
    assert plan(rig, "--foreground", **ON_VOLUME).returncode == 0
    r = end(rig, 0, "--foreground", **ON_VOLUME)
    assert rig.account.status() == "RUNNING" and f"keeping pod {POD} running: stopping or removing it" in r.stdout


# --- a launch that never made an optimizer step, and whether someone is at the terminal ---

def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


@pytest.mark.parametrize("case, args, trained, code, fate, said", [
    ("foreground", ["--foreground"], False, 0, "RUNNING", "before its first optimizer step (exit code 0), with you"),
    ("foreground, hangup", ["--foreground", "--signal", "HUP"], False, 1, "EXITED", "nobody is at the terminal"),
    ("train.sh waiting", ["--attended-by", "self"], False, 1, "RUNNING", "with you at the terminal: pod"),
    ("the wait ended", ["--attended-by", "dead"], False, 1, "EXITED", "(exit code 1) and nobody is at the terminal"),
    ("--prep: nobody waits", [], False, 0, "EXITED", "(exit code 0) and nobody is at the terminal"),
    ("trained, train.sh waiting", ["--attended-by", "self"], True, 1, "EXITED", "training exited with code 1"),
    ("Ctrl-C while waiting", ["--attended-by", "self", "--signal", "INT"], False, 1, "RUNNING", "Ctrl-C"),
    ("Ctrl-C after the step", ["--attended-by", "self", "--signal", "INT"], True, 1, "RUNNING", "Ctrl-C"),
])
def test_a_launch_that_never_stepped_leaves_the_pod_only_while_someone_is_at_the_terminal(rig, case, args, trained,
                                                                                          code, fate, said):
    args = [{"self": str(os.getpid()), "dead": str(dead_pid())}.get(a, a) for a in args]
    (rig.log / "metrics.jsonl").write_text('{"event": "train", "step": 0}\n')  # an earlier launch's step
    r = end(rig, code, *args, trained=trained, **ON_POD)
    assert rig.account.status() == fate and said in r.stdout, r.stdout
    assert (rig.account.calls() == []) == (fate == "RUNNING")


def test_trained_since_reads_only_train_events_after_the_launch_offset(tmp_path):
    import pod
    metrics = tmp_path / "metrics.jsonl"
    assert not pod.trained_since(str(tmp_path), 0)  # no file yet
    metrics.write_text('{"event": "config", "step": 0}\n{"event": "train", "step": 0}\n')
    since = metrics.stat().st_size
    assert pod.trained_since(str(tmp_path), 0) and not pod.trained_since(str(tmp_path), since)
    with open(metrics, "a") as f:
        f.write('{"event": "val", "step": 14, "loss": 5.1}\n{"event": "tra')  # the trainer is writing a line
    assert not pod.trained_since(str(tmp_path), since)
    with open(metrics, "a") as f:
        f.write('in", "step": 14}\n')
    assert pod.trained_since(str(tmp_path), since)
    metrics.write_text('{"event": "train", "step": 0}\n')  # replaced by a shorter file: read whole
    assert pod.trained_since(str(tmp_path), since)


def test_alive_takes_a_zombie_for_ended(tmp_path):
    import pod
    child = subprocess.Popen(["true"])
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # ended, not yet waited for: a zombie
    try:
        assert not pod.alive(child.pid)
    finally:
        child.wait()
    assert pod.alive(os.getpid()) and not pod.alive(child.pid)


TORCHRUN_FAILED = """W1204 21:25:19.811000 19062 torch/distributed/run.py:874] *****************************************
train_gpt2.py: --total-batch-size 512 is not a multiple of 1024; change one
train_gpt2.py: --total-batch-size 512 is not a multiple of 1024; change one
E1204 21:25:22.119000 19062 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: 1) local_rank: 0
Traceback (most recent call last):
  File "/venv/bin/torchrun", line 8, in <module>
    sys.exit(main())
             ^^^^^^
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
/kit/train_gpt2.py FAILED
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  exitcode  : 1 (pid: 19068)
============================================================
train.sh: 2026-12-04 21:25:22 training ended with exit code 1
"""
TRAINER_BUG = """Traceback (most recent call last):
  File "/kit/train_gpt2.py", line 9, in <module>
    main()
ValueError: a bug of the trainer's
"""


def test_the_wait_shows_the_trainers_lines_less_torchruns_records_traceback_and_report(tmp_path):
    import pod
    log = tmp_path / "train-1.log"
    log.write_text("pod.py: the plan, shown before the wait\n")
    tail = pod.LogTail(str(log), log.stat().st_size)
    text = TRAINER_BUG + TORCHRUN_FAILED
    cut = text.index("^^^^^^") + 3  # the log as the wait finds it: mid-line, in torchrun's traceback
    log.write_text(log.read_text() + text[:cut])
    shown = tail.lines()
    log.write_text(log.read_text() + text[cut:] + "pod.py: the pod's fate")
    shown += tail.lines()
    assert shown == TRAINER_BUG.splitlines() + [
        "train_gpt2.py: --total-batch-size 512 is not a multiple of 1024; change one",
        "train.sh: 2026-12-04 21:25:22 training ended with exit code 1"]
    assert tail.lines(final=True) == []  # a line without its newline is not shown: the writer is not done with it


def wait_for_first_step(rig: SimpleNamespace, child: str, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    """pod.py wait as train.sh runs it: bash starts CHILD (a bash script, in its own session, its output appended to
    the log) and becomes pod.py wait for it, with metrics.jsonl's size at launch. Returns wait's result and the log.
    CHILD begins once its parent is pod.py: one that ended sooner would be waited for by bash (train.sh's child takes
    seconds to start training)."""
    log, metrics = rig.log / "train-1.log", rig.log / "metrics.jsonl"
    log.write_text("pod.py: the plan, shown before the wait\n")
    metrics.write_text('{"event": "train", "step": 0}\n')  # an earlier launch's step
    child = f"until grep -q pod.py /proc/$PPID/cmdline; do sleep 0.01; done; {child}"
    script = (f'setsid bash -c "$CHILD" >>"$LOG" 2>&1 </dev/null & exec "{sys.executable}" "{ROOT / "pod.py"}" wait '
              f'--log-dir "{rig.log}" --since {metrics.stat().st_size} --pid $! --log "$LOG" '
              f'--log-offset {log.stat().st_size}')
    env = pod_env(rig, CHILD=child, LOG=str(log), METRICS=str(metrics), **env)
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60), log


def test_the_wait_returns_at_the_first_step_leaving_training_running(rig):
    go = rig.root / "go"
    r, log = wait_for_first_step(rig, 'echo "step 0 | loss 10.9"; echo \'{"event": "train", "step": 0}\' >>"$METRICS"'
                                      f'; while [[ ! -e {go} ]]; do sleep 0.05; done', **ON_POD)
    try:
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0].startswith("train.sh: waiting for training's first step") and f"tail -f {log}" in lines[0]
        assert lines[1] == "step 0 | loss 10.9" and "the plan" not in r.stdout
        pid = int(lines[2].split("stop it with: kill -- -")[1].split(")")[0])
        assert lines[2].startswith(f"train.sh: training runs in the background (pid {pid},")
        assert lines[3] == f"train.sh: follow it with: tail -f {log}"
        assert os.getpgid(pid) == pid  # the printed kill reaches its group, still running
    finally:
        go.touch()


@pytest.mark.parametrize("said", ["a refusal", "no line of the trainer's"])
def test_a_launch_that_ends_before_its_first_step_says_why_and_exits_non_zero(rig, said):
    if said == "a refusal":
        child = ('echo "train_gpt2.py: notice: no HellaSwag"; for rank in 0 1; do echo "train_gpt2.py: --batch-size 9 '
                 'is odd"; done; exit 1')
    else:
        child = "for i in $(seq 20); do echo line $i; done; exit 0"  # exit 0: already trained, say
    r, log = wait_for_first_step(rig, child, **ON_POD)
    assert r.returncode == 1
    why = ["train_gpt2.py: --batch-size 9 is odd"] if said == "a refusal" else [f"line {i}" for i in range(9, 21)]
    verdict = (f"train.sh: training ended before its first optimizer step (exit code {1 if said == 'a refusal' else 0})"
               f": nothing trained; pod {POD} is left as it was - the log: {log}")
    assert r.stderr.splitlines() == why + [verdict]
    assert r.stdout.count("--batch-size 9 is odd") == (said == "a refusal")  # shown once as it came, every rank's
    assert rig.account.calls() == []


# --- runpodctl v2 and v1, and answers that are not what they seem ---

def test_runpodctl_v1_gets_the_old_command_forms(rig):
    r = end(rig, 0, RUNPODCTL_VERSION="1", **ON_VOLUME)
    assert rig.account.calls() == [f"pod delete {POD}", f"remove pod {POD}", f"get pod {POD}"]
    assert rig.account.status() == "removed" and f'pod "{POD}" removed' in r.stdout


@pytest.mark.parametrize("version", ["1", "2"])
def test_a_stop_the_api_ignored_is_caught_and_tried_again(rig, version):
    # v1 prints `stop failed; status is RUNNING` and exits 0; v2 exits 0 with the pod still RUNNING in its JSON
    r = end(rig, 0, RUNPODCTL_VERSION=version, RUNPODCTL_STOP_IGNORED="1", **ON_POD)
    stop = f"stop pod {POD}" if version == "1" else f"pod stop {POD}"
    assert rig.account.calls().count(stop) == 2 and rig.account.status() == "EXITED"
    assert "try 1" in r.stdout and f"done: pod {POD} is stopped" in r.stdout
    if version == "1":
        assert "stop failed; status is RUNNING" in r.stdout


def test_a_pod_that_says_stopped_but_still_runs_is_not_taken_as_stopped(rig):
    # runpodctl's answer claims success, but pod get still shows it RUNNING: only the status counts
    (rig.account.bin / "runpodctl").unlink()
    (rig.account.bin / "runpodctl").write_text(f"""#!/usr/bin/env bash
if [[ $2 == stop ]]; then
    printf '%s\\n' "$*" >> "$CALLS/runpodctl"
    printf '{{\\n  "desiredStatus": "EXITED",\\n  "id": "{POD}"\\n}}\\n'
    exit 0
fi
exec "{STAND_IN_RUNPODCTL}" "$@"
""")
    (rig.account.bin / "runpodctl").chmod(0o755)
    r = end(rig, 0, **ON_POD)
    assert f"pod {POD} is RUNNING" in r.stdout and f"pod {POD} may still be running" in r.stdout
    assert rig.account.calls().count(f"pod stop {POD}") == 3  # the first try and two more


def test_removing_that_keeps_failing_stops_the_pod_instead(rig):
    r = end(rig, 0, RUNPODCTL_DELETE_FAILS="1", **ON_VOLUME)
    assert rig.account.calls().count(f"pod delete {POD}") == 3 and rig.account.status() == "EXITED"
    assert "Something went wrong" in r.stdout and "stopping it instead" in r.stdout
    assert f"done: pod {POD} is stopped" in r.stdout


def test_a_network_outage_at_the_end_is_waited_out(rig):
    # calls 1-3 fail: the launch check (a warning in --foreground), then the first two removal tries
    r = plan(rig, "--foreground", RUNPODCTL_NETWORK_DOWN="3", **ON_VOLUME)
    assert r.returncode == 0 and "warning: runpodctl cannot reach pod" in r.stdout
    r = end(rig, 0, "--foreground", RUNPODCTL_NETWORK_DOWN="3", **ON_VOLUME)
    assert rig.account.status() == "removed"
    assert "no such host" in r.stdout and "try 2" in r.stdout and f"done: pod {POD} is removed" in r.stdout


def test_when_nothing_works_it_says_the_pod_may_still_be_billing(rig):
    r = end(rig, 0, RUNPODCTL_NETWORK_DOWN="always", **ON_VOLUME)
    calls = rig.account.calls()
    assert calls.count(f"pod delete {POD}") == 3 and calls.count(f"pod stop {POD}") == 3
    assert rig.account.status() == "RUNNING" and "may still be running and costing money" in r.stdout


def test_a_missing_api_key_is_not_retried(rig):
    r = end(rig, 0, RUNPOD_POD_ID=POD, RUNPOD_VOLUME_ID="vol-1")
    assert rig.account.calls() == [f"pod delete {POD}", f"pod stop {POD}"]
    assert "api key not configured" in r.stdout


def test_the_api_key_is_never_said(rig):
    # runpodctl v1 puts the key into the URL of its network errors
    r = end(rig, 0, RUNPODCTL_VERSION="1", RUNPODCTL_NETWORK_DOWN="always", **ON_VOLUME)
    assert "api_key=<RUNPOD_API_KEY>" in r.stdout and KEY not in r.stdout


def test_without_runpodctl_it_says_what_to_do_in_the_console(rig):
    (rig.account.bin / "runpodctl").unlink()
    r = end(rig, 0, PATH=f"{Path(sys.executable).parent}:/usr/bin:/bin", **ON_POD)
    assert f"runpodctl not found - stop pod {POD} yourself in the RunPod console" in r.stdout


# --- the plan at launch ---

def test_the_plan_says_what_happens_and_that_runpodctl_reaches_the_pod_and_logs_it(rig):
    log = rig.log / "train-1.log"
    r = plan(rig, "--log", str(log), **ON_VOLUME)
    assert r.returncode == 0, r.stderr
    assert f"pod {POD} is removed (the volume keeps" in r.stdout and "if removing fails, it is stopped" in r.stdout
    assert f"runpodctl (v2) reaches pod {POD}: its status is RUNNING" in r.stdout
    assert f"before its first step: pod {POD} is left as it was while you are at the terminal" in r.stdout
    assert log.read_text() == r.stdout and rig.account.calls() == [f"pod get {POD}"]
    r = plan(rig, "--log", str(log), RUNPODCTL_VERSION="1", **ON_POD)
    assert f"runpodctl (v1) reaches pod {POD}" in r.stdout and "if stopping fails, it is left running" in r.stdout


@pytest.mark.parametrize("failure", ["no key", "wrong key", "network down", "v1 wrong key", "v1 pod not in account",
                                     "no runpodctl"])
def test_a_detached_launch_is_refused_when_runpodctl_cannot_reach_the_pod(rig, failure):
    env = dict(ON_VOLUME)
    if failure == "no key":
        del env["RUNPOD_API_KEY"]
    elif failure in ("wrong key", "v1 wrong key"):
        env["RUNPOD_API_KEY"] = "rpa_REVOKED"
    elif failure == "network down":
        env["RUNPODCTL_NETWORK_DOWN"] = "always"
    elif failure == "v1 pod not in account":
        env["RUNPOD_POD_ID"] = "pod-someone-else"
    elif failure == "no runpodctl":
        (rig.account.bin / "runpodctl").unlink()
        env["PATH"] = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    if failure.startswith("v1"):
        env["RUNPODCTL_VERSION"] = "1"
    log = rig.log / "train-1.log"
    r = plan(rig, "--log", str(log), **env)
    error = one_line_error(r)
    assert "cannot reach pod" in error and "--no-pod-check" in error and not log.exists()
    if failure != "no runpodctl":
        assert "    " in r.stdout  # runpodctl's answer, indented, above the error
    # the ways out the message names
    assert plan(rig, "--no-pod-check", **env).returncode == 0 and plan(rig, "--keep-pod", **env).returncode == 0


def test_a_log_dir_held_by_a_live_run_refuses_the_launch_before_anything(rig):
    import checkpoints
    (rig.log / "train-1.log").touch()
    checkpoints.lock_log_dir(str(rig.log))
    try:
        error = one_line_error(plan(rig, **ON_VOLUME))
    finally:
        checkpoints.release_log_dirs()
    assert "already going" in error and f"pid {os.getpid()}" in error and f"tail -f {rig.log}/train-1.log" in error
    assert rig.account.calls() == []
    assert plan(rig, **ON_VOLUME).returncode == 0  # released


# --- RunPod's variables from /etc/rp_environment ---

def test_runpod_variables_are_read_from_rp_environment_as_data(rig):
    pwned = rig.root / "pwned"
    rig.rp_environment.write_text(f"""export PATH="/nowhere"
export RUNPOD_POD_ID="{POD}"
export RUNPOD_API_KEY="{KEY}"
  export RUNPOD_VOLUME_ID="vol-1"
export RUNPOD_PUBLIC_NOTE="$(touch {pwned})"
RUNPOD_GPU_COUNT='8'
touch {pwned}
""")
    env = dict(item.split("=", 1) for item in pod_py(rig, "env").stdout.split("\0") if item)
    assert env == {"RUNPOD_POD_ID": POD, "RUNPOD_API_KEY": KEY, "RUNPOD_VOLUME_ID": "vol-1",
                   "RUNPOD_PUBLIC_NOTE": f"$(touch {pwned})", "RUNPOD_GPU_COUNT": "8"}
    r = plan(rig)
    assert r.returncode == 0 and "read from" in r.stdout
    end(rig, 0)
    assert rig.account.status() == "removed"  # it knew the pod, the key and the network volume
    assert not pwned.exists()  # nothing in the file ran
    assert pod_py(rig, "env", RUNPOD_POD_ID=POD).stdout == ""  # a shell that read it


def test_rp_environment_is_ignored_when_the_shell_has_the_pod_id(rig):
    rig.rp_environment.write_text(f'export RUNPOD_POD_ID="pod-other"\nexport RUNPOD_API_KEY="{KEY}"\n')
    assert "read from" not in plan(rig, **ON_POD).stdout
    end(rig, 0, **ON_POD)
    assert all(POD in call for call in rig.account.calls()) and rig.account.status() == "EXITED"


def test_help_says_what_happens_to_the_pod_in_each_outcome(rig):
    r = pod_py(rig, "--help")
    assert r.returncode == 0
    text = r.stdout[r.stdout.index("What happens to the pod"):]
    for outcome, fate in [("network volume", "the pod is removed"), ("volume disk", "the pod is stopped"),
                          ("outside /workspace", "a detached launch is refused"),
                          ("Ctrl-C", "left running"), ("  --keep-pod ", "left running"),
                          ("removing fails", "stopped instead"), ("stopping fails", "left running"),
                          ("someone at the terminal", "left as it was"), ("nobody (--prep", "as when training failed")]:
        line = next(line for line in text.splitlines() if outcome in line)
        assert fate in text[text.index(line):text.index(line) + 400], outcome
    assert "v2 (`runpodctl pod get|stop|delete ID`)" in text and "v1 (`runpodctl get|stop|remove pod ID`)" in text


def test_a_foreground_run_whose_terminal_went_away_logs_all_and_still_ends_the_pod(rig):
    # pod.py run --foreground is the tee of train.sh --foreground: output piped into a reader that left (| head -1,
    # a dropped SSH) costs the terminal only; the log gets every line, the pod is dealt with, training's code returned
    log = rig.log / "train-1.log"
    trainer = (f"echo '{{\"event\": \"train\", \"step\": 0}}' >> {rig.log}/metrics.jsonl; "
               "for i in $(seq 3000); do echo line $i; done; exit 3")
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads the terminal any more
    try:
        r = subprocess.run([sys.executable, str(ROOT / "pod.py"), "run", "--foreground", "--log-dir", str(rig.log),
                            "--log", str(log), "--since", "0", "--", "bash", "-c", trainer], stdout=write_end,
                           stderr=subprocess.PIPE, text=True, env=pod_env(rig, **ON_VOLUME), timeout=60)
    finally:
        os.close(write_end)
    assert r.returncode == 3 and r.stderr == "", r.stderr
    lines = log.read_text().splitlines()
    assert lines[0] == f"train.sh: logging to {log}" and "line 3000" in lines
    assert "training ended with exit code 3" in lines[lines.index("line 3000") + 1]
    assert f"pod.py: done: pod {POD} is removed" in lines
    assert rig.account.status() == "removed"
