#!/usr/bin/env bash
# The workflow on a real Slurm cluster, as CI runs it (the last line of .ci/run).
#
#   bash .ci/slurm/run_ci.sh
#
# 1. installs Debian's Slurm and starts a one-node cluster on loopback
#    (.ci/slurm/cluster.sh; stopped again on exit, also on failure);
# 2. runs $SLURM_CI_TARGETS locally (--cores 2) in $WORK/local;
# 3. runs the same targets through `--profile workflow/profiles/slurm` (plus the
#    test cluster's workflow/profiles/slurm-ci) in $WORK/slurm, and scancels one
#    `train` job after its first checkpoint: only its model (and the jobs that
#    need it) may be missing afterwards, and no model file may appear for it;
# 4. re-runs the same command: it must finish, submitting only the cancelled
#    job (which resumes from its checkpoint) and what depends on it;
# 5. checks that every job went through Slurm (every submitted Slurm job id is
#    in `squeue --states=all` as COMPLETED, the cancelled one as CANCELLED, each
#    with its Slurm log) and that GPU rules got their GPU;
# 6. compares the outputs of the two runs (.ci/slurm/compare.py);
# 7. `snakemake --lint` must report nothing.
#
# The demo config with .ci/slurm/config.yaml over it (one method, four epochs).
# Variables: SLURM_CI_TARGETS (default "all": demo, stores, labels, folds,
# indices, training, prediction, voting, evaluation, figures; other targets must
# include a train job, which step 3 cancels),
# SLURM_CI_WORK (default: a new /tmp/multimag-slurm-ci.XXXXXX, kept for
# inspection), SLURM_CI_TIMEOUT (seconds per snakemake run, default 900; the run
# is killed after it, so a hang cannot eat the CI budget), PYTHON (default
# .venv/bin/python, which needs `pip install -e '.[test]'`).
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
PY=${PYTHON:-$REPO/.venv/bin/python}
read -r -a TARGETS <<< "${SLURM_CI_TARGETS:-all}"
WORK=${SLURM_CI_WORK:-$(mktemp -d /tmp/multimag-slurm-ci.XXXXXX)}
LIMIT=${SLURM_CI_TIMEOUT:-900}
START=$SECONDS

say() { echo "[slurm-ci $((SECONDS - START))s] $*" >&2; }
fail() { say "FAIL: $*"; exit 1; }

trap 'rc=$?; bash .ci/slurm/cluster.sh stop || true; say "work dir: $WORK"; exit $rc' EXIT
bash .ci/slurm/cluster.sh start
mkdir -p "$WORK"

# The rules call `multimag` and the jobs run `python -m snakemake`: both from
# this environment; sbatch passes PATH on (--export=ALL).
PATH="$(dirname "$PY"):$PATH"
export PATH
SMK=("$PY" -m snakemake --snakefile "$REPO/Snakefile"
     --configfile "$REPO/config.yaml" "$REPO/.ci/slurm/config.yaml")
# the real profile, with the test cluster's settings over it (a second --profile
# would replace the first; a workflow profile is layered on top)
SLURM=(--profile "$REPO/workflow/profiles/slurm" --workflow-profile "$REPO/workflow/profiles/slurm-ci")
"$PY" -c "import snakemake_executor_plugin_slurm" \
    || fail "snakemake-executor-plugin-slurm is not installed in $PY (pip install -e '.[test]')"

say "local run: ${TARGETS[*]}"
timeout -s KILL "$LIMIT" "${SMK[@]}" --directory "$WORK/local" --cores 2 "${TARGETS[@]}" \
    > "$WORK/local.log" 2>&1 \
    || { tail -n 30 "$WORK/local.log" >&2; fail "the local run failed"; }
say "local run done"

# --- Slurm run 1, with one training job cancelled mid-run ---------------------
# The victim is a `train` job, cancelled once its first epoch's checkpoint is on
# disk: the model files must not appear, the other folds must finish, and the
# re-run must resume that training from its checkpoint.
say "Slurm run 1: ${TARGETS[*]}, one train job to be cancelled"
SLURM_DIR=$WORK/slurm
timeout -s KILL "$LIMIT" "${SMK[@]}" "${SLURM[@]}" --directory "$SLURM_DIR" "${TARGETS[@]}" \
    > "$WORK/slurm-run1.log" 2>&1 &
run1=$!
victim="" victim_job=""
while kill -0 "$run1" 2>/dev/null && [[ -z $victim ]]; do
    # comment rule_train_wildcards_{method}_{fold} (the plugin joins the wildcard values)
    while read -r job comment; do
        [[ -n $job ]] || continue
        wildcards=${comment#rule_train_wildcards_}
        fold=${wildcards##*_} method=${wildcards%_*}
        model=$SLURM_DIR/results/models/$method/fold$fold
        if [[ -e $model/checkpoints/last.pt && ! -e $model/model.json ]]; then
            scancel "$job"
            victim=$method/fold$fold victim_job=$job
            say "scancel $job: train $victim after its first checkpoint"
            break
        fi
    done < <(squeue -h -t RUNNING -o '%i %k' | awk '$2 ~ /^rule_train_wildcards_/')
    sleep 0.2
done
rc1=0
wait "$run1" || rc1=$?
[[ -n $victim ]] || fail "no train job was caught mid-run to cancel (see $WORK/slurm-run1.log)"
[[ $rc1 -ne 0 ]] || fail "Slurm run 1 succeeded although job $victim_job was cancelled"
[[ $rc1 -ne 137 ]] || fail "Slurm run 1 hung and was killed after ${LIMIT}s"
state=$(squeue -h --states=all -j "$victim_job" -o %T)
[[ $state == CANCELLED ]] || fail "job $victim_job is $state, not CANCELLED"
grep -q "SLURM-job '$victim_job' failed" "$WORK/slurm-run1.log" \
    || fail "Snakemake did not report the cancelled job $victim_job as failed"
# Only the cancelled training and what needs its model are missing.
models=$SLURM_DIR/results/models
[[ ! -e $models/$victim/model.pt && ! -e $models/$victim/model.json ]] \
    || fail "model files appeared for $victim although its job was cancelled"
for meta in "$models"/*/fold*/; do
    [[ ${meta%/} == "$models/$victim" ]] && continue
    [[ -e $meta/model.json ]] || fail "$meta is incomplete after run 1: the cancellation failed more than its own job"
done
say "run 1 failed as it should (exit $rc1): only $victim and what needs it are missing"

# --- Slurm run 2: resume ---------------------------------------------------
say "Slurm run 2: resume"
timeout -s KILL "$LIMIT" "${SMK[@]}" "${SLURM[@]}" --directory "$SLURM_DIR" "${TARGETS[@]}" \
    > "$WORK/slurm-run2.log" 2>&1 \
    || { tail -n 40 "$WORK/slurm-run2.log" >&2; fail "Slurm run 2 (resume) failed"; }
[[ $(grep -c "rule_train/" "$WORK/slurm-run2.log") -eq 1 ]] \
    || fail "run 2 did not redo exactly one train job (the cancelled $victim)"
grep -q "resumed from .*$victim/checkpoints/last.pt after epoch" \
    "$SLURM_DIR/results/logs/train/$victim.log" \
    || fail "the re-run of $victim did not resume from its checkpoint"
if grep -E "rule_(demo|tissue|tile|label|split|index)/" "$WORK/slurm-run2.log" >/dev/null; then
    fail "run 2 redid jobs that had finished in run 1"
fi
say "run 2 done: resumed $victim from its checkpoint and ran what depends on it"

# --- every job went through Slurm ---------------------------------------------
# The plugin logs "Job N has been submitted with SLURM jobid J (log: FILE)".
submitted=$(cat "$WORK"/slurm-run[12].log \
    | sed -n 's/.*submitted with SLURM jobid \([0-9_]*\) (log: \(.*\))\.$/\1 \2/p')
[[ -n $submitted ]] || fail "no Slurm job ids in the Snakemake logs"
n=0
while read -r job logfile; do
    state=$(squeue -h --states=all -j "$job" -o %T 2>/dev/null || true)
    expect=COMPLETED
    [[ $job == "$victim_job" ]] && expect=CANCELLED
    [[ $state == "$expect" ]] || fail "Slurm job $job is '$state', not $expect"
    [[ -s $logfile ]] || fail "Slurm job $job has no log $logfile"
    n=$((n + 1))
done <<< "$submitted"
# ... and Slurm ran no more jobs under these runs' job names than that.
names=$(cat "$WORK"/slurm-run[12].log | sed -n 's/.*SLURM run ID: \([^ ]*\).*/\1/p' | sort -u | paste -sd,)
in_queue=$(squeue -h --states=all -n "$names" -o %i | wc -l)
[[ $in_queue -eq $n ]] || fail "$in_queue jobs of these runs in Slurm's queue, Snakemake submitted $n"
# GPU rules asked Slurm for their GPU (the test node's GPU is /dev/null: the
# code runs on the CPU, which is what CI can check).
while read -r job comment tres; do
    case $comment in
        rule_train* | rule_predict*)
            [[ $tres == *gpu* ]] || fail "GPU job $job ($comment) got no GPU from Slurm: $tres" ;;
    esac
done < <(squeue -h --states=all -n "$names" -O "JobID:12,Comment:120,tres-per-job:40")
say "all $n jobs went through Slurm: $(squeue -h --states=all -n "$names" -o %T | sort | uniq -c | xargs)"

# --- the same outputs as the local run ----------------------------------------
"$PY" .ci/slurm/compare.py "$WORK/local" "$SLURM_DIR" || fail "Slurm and local outputs differ"

say "snakemake --lint"
if ! "${SMK[@]}" --directory "$WORK/lint" --lint > "$WORK/lint.log" 2>&1; then
    cat "$WORK/lint.log" >&2
    fail "snakemake --lint reported problems"
fi
say "PASS in $((SECONDS - START)) s"
