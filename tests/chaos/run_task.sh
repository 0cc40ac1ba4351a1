#!/usr/bin/env bash
# The command `fsqueue run` runs for each chaos task (tests/chaos/farm.py starts it as `bash run_task.sh`).
# It appends `start <task> <pid> <token> <time>` to the independent history, and `task-start <task> <token>
# <pid>` to its slot's launch log (the file `fsqueue run` writes its stderr to), so the harness can tell
# which claims each launch settled. Each printf is one write to an O_APPEND file. Poison tasks fail
# (exit 3) or SIGKILL their worker, the `fsqueue run` process ($PPID), on every attempt.
IFS= read -r payload
printf 'start %s %s %s %s\n' "$FSQUEUE_TASK_ID" "$$" "$FSQUEUE_TOKEN" "$EPOCHREALTIME" >>"$CHAOS_HISTORY"
printf 'task-start %s %s %s\n' "$FSQUEUE_TASK_ID" "$FSQUEUE_TOKEN" "$$" >>"$CHAOS_LAUNCH_LOG"
case $payload in
*'"poison-fail"'*)
    echo "poison task $FSQUEUE_TASK_ID fails on every attempt" >&2
    exit 3
    ;;
*'"poison-crash"'*)
    kill -KILL "$PPID" # PR_SET_PDEATHSIG then kills this command too
    exit 1
    ;;
esac
if [[ $payload =~ \"sleep\":\ \"([0-9.]+)\" ]]; then
    sleep "${BASH_REMATCH[1]}"
fi
printf '{"pid": %s, "token": "%s"}\n' "$$" "$FSQUEUE_TOKEN"
