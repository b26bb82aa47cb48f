#!/usr/bin/env bash
# Mutation testing of the core modules and the resume path of training, with cosmic-ray
# (pip install -e '.[mutation,test,torch]'). Not part of CI: about 50 minutes on 2 cores.
#
#   mutation/run.sh                      # every module, from fresh sessions
#   mutation/run.sh scoring intervention # some of: scoring intervention sae checkpoint loop
#   KEEP=1 mutation/run.sh sae           # continue an interrupted session instead of re-creating it
#   SURVIVORS=1 mutation/run.sh scoring  # re-run only the survivors of the existing session
#   mutation/run.sh --report             # only print the scores of the existing sessions
#
# cosmic-ray writes each mutant into the source file in place and runs the module's fast
# tests (the test-command of mutation/<module>.toml) in a fresh process, one at a time. An
# interrupted run can leave a mutated file behind: `git diff --stat` shows it and
# `git checkout -- <file>` restores it (the script does so on exit).
set -euo pipefail
cd "$(dirname "$0")/.."
sessions=mutation/sessions
mkdir -p "$sessions"
report_only=0
if [[ "${1:-}" == "--report" ]]; then report_only=1; shift; fi
modules=("$@")
[[ ${#modules[@]} -gt 0 ]] || modules=(scoring intervention sae checkpoint loop)

sources=(sauce_jax/scoring.py sauce_jax/intervention.py sauce_jax/sae.py train/loop.py train/checkpoint.py)
restore() { git checkout -- "${sources[@]}"; }
if [[ $report_only == 0 ]]; then
    # restoring by checkout would discard uncommitted edits: mutate committed sources only
    git diff --quiet -- "${sources[@]}" || { echo "commit or stash the changes to ${sources[*]} first" >&2; exit 1; }
    trap restore EXIT
    for m in "${modules[@]}"; do
        db="$sessions/$m.sqlite"
        if [[ -n "${SURVIVORS:-}" && -f "$db" ]]; then
            python -c "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute(\"delete from work_results where test_outcome = 'SURVIVED'\"); c.commit()" "$db"
        elif [[ -z "${KEEP:-}" || ! -f "$db" ]]; then
            rm -f "$db"
            cosmic-ray init "mutation/$m.toml" "$db"
            cr-filter-operators "$db" mutation/filters.toml
            if [[ $m == loop ]]; then cr-filter-lines --config mutation/loop.toml "$db"; fi
            python mutation/thin.py "$db"
        fi
        start=$(date +%s)
        cosmic-ray exec "mutation/$m.toml" "$db"
        echo "$m: $(( $(date +%s) - start )) s"
        restore
    done
fi
python mutation/score.py "${modules[@]/#/$sessions/}"
