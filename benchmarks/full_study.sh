#!/usr/bin/env bash
# The full proposal study (examples/proposal.toml, ~16 h of two idle cores) across machines
# that do not last as long: each session restores the finished runs kept in the repository,
# continues the grid in the background, and before it ends saves what finished and publishes
# the report of everything so far (docs/results.md).
#
#   bash benchmarks/full_study.sh start     # restore records, run the rest in the background
#   bash benchmarks/full_study.sh progress  # runs finished so far, and the log's last lines
#   bash benchmarks/full_study.sh stop      # SIGTERM: each run stops at its round boundary
#   bash benchmarks/full_study.sh save      # keep finished runs, write and publish the report
#
# The grid runs on a frozen worktree of one commit (STUDY_COMMIT; default: the one the kept
# runs were made with, docs/results/records/commit) so that every run of the study is
# made by the same code while the repository moves on; unpublished cells go first.
# STUDY_ORDER is a list of selections, each of filters joined by '+', e.g.
#   STUDY_ORDER="task=minilm_agnews+split=dir05 split=iid" bash benchmarks/full_study.sh start
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${STUDY_OUT:-$ROOT/runs/proposal-full}
CODE=${STUDY_CODE:-$ROOT/runs/proposal-code}
RECORDS=$ROOT/docs/results/records
PY=$ROOT/.venv/bin/python
# the worktree is not beside ../shared as this checkout is: name the data folder for it
export FEDPEFT_DATA_DIR=${FEDPEFT_DATA_DIR:-$(cd "$ROOT/../shared/data" 2>/dev/null && pwd)}
ORDER=${STUDY_ORDER:-"split=patho split=dir01 split=dir05 split=iid"}

case "${1:-}" in
start)
    if pgrep -f "fedpeft experiment examples/proposal.toml --out $OUT" >/dev/null; then
        echo "the study is already running"; exit 0
    fi
    if [ ! -d "$CODE" ]; then  # the commit the kept runs were made with, unless told
        commit=${STUDY_COMMIT:-$(cat "$RECORDS/commit" 2>/dev/null || echo HEAD)}
        git -C "$ROOT" worktree add --detach "$CODE" "$commit"
        ln -s "$ROOT/.venv" "$CODE/.venv"
    fi
    [ -d "$RECORDS" ] && "$PY" "$ROOT/benchmarks/study_records.py" restore "$RECORDS" "$OUT"
    echo "code: $(git -C "$CODE" rev-parse --short HEAD); log: $OUT.log"
    (
        cd "$CODE"
        for sel in $ORDER; do  # a selection: filters joined by '+', all of which a run meets
            only=(); IFS=+ read -ra parts <<<"$sel"
            for p in "${parts[@]}"; do only+=(--only "$p"); done
            nice -n 19 env PYTHONPATH=src .venv/bin/fedpeft experiment examples/proposal.toml \
                --out "$OUT" "${only[@]}" --no-report || [ $? -eq 1 ]  # 1: some run failed
        done
    ) >>"$OUT.log" 2>&1 </dev/null &
    disown
    ;;
progress)
    grep -c '^done ' "$OUT.log" || true
    tail -n 3 "$OUT.log"
    ;;
stop)
    pkill -f "full_study.sh start" || true
    pkill -TERM -f "fedpeft experiment examples/proposal.toml --out $OUT" || true
    ;;
save)
    "$PY" "$ROOT/benchmarks/study_records.py" save "$OUT" "$RECORDS"
    git -C "$CODE" rev-parse HEAD >"$RECORDS/commit"
    PYTHONPATH=$ROOT/src "$ROOT/.venv/bin/fedpeft" report "$OUT"
    "$PY" "$ROOT/benchmarks/results_doc.py" "$OUT" "$ROOT/docs/results.md" \
        --preface "$ROOT/benchmarks/results_preface.md"
    ;;
*)
    sed -n '2,13p' "$0"; exit 2
    ;;
esac
