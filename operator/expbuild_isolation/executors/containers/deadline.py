"""The sandbox's own end: a container stops when its worker goes, or at its deadline, with no worker needed.

The worker kills a container at the task's timeout. A worker killed mid-task (a node agent lost with its
pod) or frozen would leave the container running, so every container runs its task under a small init of
ours: two shell scripts run by a static busybox, mounted read-only at ``INIT_DIR`` (``busybox.py``; the
image needs no shell).

- PID 1 is ``init.sh``. It looks the program up in PATH itself (busybox would prefer its own applet of the
  same name), runs the task as its child in the foreground, with stdin from /dev/null and exactly the
  environment the engine gave the container, and exits with the task's status; the engine ends the rest.
  The task cannot signal PID 1: the init of a PID namespace ignores the signals from inside it that it does
  not handle, and this one handles none.
- ``watch.sh``, started first in a session of its own (a task that signals its process group does not
  reach it), reads the container's stdin. Containers are created with stdin open *once*: the engine closes
  it when the executor's attached connection goes, which the kernel does when the worker dies. At that end
  of file, or at the deadline (the task's timeout plus ``GRACE_SECONDS``), it writes one line to stderr and
  kills every process but itself and PID 1 (``kill -9 -1``); PID 1's child has then ended, and PID 1 exits.

What this cannot stop: the watcher runs as the task's user, so a task that looks for it can kill it
(``docs/security.md``). Then the worker's own timeout ends the task, or if the worker is gone too, the
sweep of a restarted worker, which goes by the container's deadline label (``sweep_after``).
"""

from __future__ import annotations

import math
import re
import shlex
import time
from collections.abc import Mapping, Sequence

# Past the task's timeout: the worker ends the task at its timeout; this ends it when the worker cannot.
# The same grace as the namespace backend's sandbox (namespace/executor.py).
GRACE_SECONDS = 10.0
LONGEST_DEADLINE_SECONDS = 10 * 365 * 24 * 3600   # what a request without a bound gets (the API allows 7 days)
SWEEP_SLACK_SECONDS = 60     # the sweep removes a container this long after its own deadline
INIT_DIR = "/.expbuild-init"
BUSYBOX = f"{INIT_DIR}/busybox"   # a multi-call binary: it must be called busybox to take the applet's name
INIT_PROCESSES = 2           # PID 1 and the watcher: added to the pids limit, so the task keeps its own
DEADLINE_LINE = "expbuild: the sandbox's own deadline passed: every process was killed"
WORKER_GONE_LINE = "expbuild: the worker that started this sandbox is gone: every process was killed"

# BUSYBOX sh init.sh DEADLINE NEXTRA EXTRA... PROGRAM ARGS...   (or sourced after `set -- ...`)
INIT_SH = r"""set -f
bb=@BUSYBOX@ deadline=$1 nextra=$2
shift 2

# The task's environment, quoted for eval: the container's as the engine made it, read back from this
# process's initial one (the shell exports PWD and SHLVL of its own), then EXTRA (NAME=VALUE).
q=\' environment= path=$PATH
while IFS= read -r -d '' entry; do
  case $entry in PATH=*) path=${entry#PATH=} ;; esac
  case $entry in *=*) environment="$environment '${entry//$q/$q\\$q$q}'" ;; esac
done < /proc/$$/environ
while [ "$nextra" -gt 0 ]; do
  case $1 in PATH=*) path=${1#PATH=} ;; esac
  environment="$environment '${1//$q/$q\\$q$q}'"
  shift; nextra=$((nextra - 1))
done

# A program without a slash is looked up in PATH here: busybox would run its own applet of that name.
argv0=$1 prog=
case $argv0 in
  */*) prog=$argv0 ;;
  *) saved_ifs=$IFS; IFS=:
     for dir in $path; do
       if [ -f "${dir:-.}/$argv0" ] && [ -x "${dir:-.}/$argv0" ]; then prog=${dir:-.}/$argv0; break; fi
     done
     IFS=$saved_ifs ;;
esac
if [ -z "$prog" ]; then echo "expbuild: $argv0: command not found" >&2; exit 127; fi
if [ ! -f "$prog" ] || [ ! -x "$prog" ]; then echo "expbuild: $argv0: not an executable file" >&2; exit 127; fi
shift

# The watcher, only as the init of a PID namespace (kill -1 anywhere else would reach beyond the task).
# An asynchronous command's own stdin is /dev/null: it gets the container's through fd 3.
if [ "$$" = 1 ]; then
  exec 3<&0
  "$bb" setsid "$bb" sh @INIT_DIR@/watch.sh "$deadline" <&3 3<&- &
  exec 3<&-
fi
# The task gets stderr back from fd 4 in its own process: the shell's stderr is /dev/null meanwhile, so its
# own job reports ("Killed") add nothing to the task's.
exec 4>&2 2>/dev/null
eval "(exec \"\$bb\" env -i -- $environment \"\$prog\" \"\$@\" </dev/null 2>&4 4>&-)"
"""

# BUSYBOX sh watch.sh DEADLINE, stdin the container's. busybox's read -t returns 1 at end of file and at
# its timeout alike, so the clock tells them apart: back well before its time means end of file. One read
# waits a day at most (busybox refuses a timeout of about 24 days or more).
WATCH_SH = r"""read up _ < /proc/uptime; end=$(( ${up%.*} + $1 )) why=@DEADLINE_LINE@
while :; do
  read up _ < /proc/uptime; now=${up%.*}
  [ "$now" -lt "$end" ] || break
  left=$((end - now)); [ "$left" -le 86400 ] || left=86400
  if IFS= read -r -t "$left" line; then why=@WORKER_GONE_LINE@; break; fi
  read up _ < /proc/uptime
  if [ $(( ${up%.*} - now )) -lt $((left - 2)) ]; then why=@WORKER_GONE_LINE@; break; fi
done
echo "$why" >&2
kill -9 -1
"""


def _render(text: str) -> str:
    for name, value in (("BUSYBOX", BUSYBOX), ("INIT_DIR", INIT_DIR), ("DEADLINE_LINE", DEADLINE_LINE),
                        ("WORKER_GONE_LINE", WORKER_GONE_LINE)):
        text = text.replace(f"@{name}@", shlex.quote(value))
    return text


SCRIPTS = {"init.sh": _render(INIT_SH), "watch.sh": _render(WATCH_SH)}


def deadline_seconds(timeout_seconds: float) -> int:
    """Whole seconds from the start to the sandbox's own deadline."""
    return min(LONGEST_DEADLINE_SECONDS, math.ceil(min(timeout_seconds, LONGEST_DEADLINE_SECONDS) + GRACE_SECONDS))


def sweep_after(timeout_seconds: float, now: float | None = None) -> int:
    """The wall-clock time (epoch seconds) after which any sweep may remove a container created ``now``."""
    return int(now if now is not None else time.time()) + deadline_seconds(timeout_seconds) + SWEEP_SLACK_SECONDS


def init_arguments(timeout_seconds: float, argv: Sequence[str], extra_env: Mapping[str, str] | None = None) -> list[str]:
    extra = [f"{key}={value}" for key, value in (extra_env or {}).items()]
    return [str(deadline_seconds(timeout_seconds)), str(len(extra)), *extra, *argv]


def init_command(timeout_seconds: float, argv: Sequence[str]) -> list[str]:
    """A cold container's command line: our init running ``argv``."""
    return [BUSYBOX, "sh", f"{INIT_DIR}/init.sh", *init_arguments(timeout_seconds, argv)]


def sourced_init(working_dir: str, timeout_seconds: float, argv: Sequence[str], env: Mapping[str, str]) -> str:
    """What a waiting warm container sources (its PID 1 is already our busybox's sh): the same init."""
    arguments = init_arguments(timeout_seconds, argv, env)
    return (f"cd -- {shlex.quote(working_dir)} || exit 127\n"
            f"set -- {' '.join(shlex.quote(arg) for arg in arguments)}\n"
            f". {INIT_DIR}/init.sh\n")


_NOT_STARTED = re.compile(rb"(expbuild: .*: (command not found|not an executable file)"
                          rb"|env: can't execute '.*': [^\n]*)\n", re.DOTALL)


def start_failure(exit_code: int, stderr: bytes) -> str | None:
    """Why the program never started, when the init (or busybox's env at exec) says so, else None.

    The line is all of stderr then, since nothing of the task ran; a task that prints such a line alone and
    exits 126 or 127 gets StartFailed, which is all it could change.
    """
    if exit_code in (126, 127) and _NOT_STARTED.fullmatch(stderr):
        return stderr.decode(errors="replace").strip()
    return None


def ended_at_own_deadline(stderr: bytes) -> bool:
    """The watcher's deadline line is at the end of stderr (the task may have written until the kill)."""
    return DEADLINE_LINE.encode() in stderr[-(len(DEADLINE_LINE) + 4096):]
