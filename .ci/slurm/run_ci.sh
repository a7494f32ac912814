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
#    `tile` job while it writes its store: only that slide's jobs (and the
#    dataset steps that need all slides) may be missing afterwards, and no
#    store may appear for it;
# 4. re-runs the same command: it must finish, submitting only the cancelled
#    job and what depends on it;
# 5. checks that every job went through Slurm (every submitted Slurm job id is
#    in `squeue --states=all` as COMPLETED, the cancelled one as CANCELLED, each
#    with its Slurm log) and that GPU rules got their GPU;
# 6. compares the outputs of the two runs (.ci/slurm/compare.py);
# 7. `snakemake --lint` must report nothing.
#
# Variables: SLURM_CI_TARGETS (default "dataset"; e.g. add
# results/models/ce_baseline/fold0/model.pt for one training job),
# SLURM_CI_WORK (default: a new /tmp/multimag-slurm-ci.XXXXXX, kept for
# inspection), SLURM_CI_TIMEOUT (seconds per snakemake run, default 900; the run
# is killed after it, so a hang cannot eat the CI budget), PYTHON (default
# .venv/bin/python, which needs `pip install -e '.[test]'`).
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
PY=${PYTHON:-$REPO/.venv/bin/python}
read -r -a TARGETS <<< "${SLURM_CI_TARGETS:-dataset}"
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
SMK=("$PY" -m snakemake --snakefile "$REPO/Snakefile" --configfile "$REPO/config.yaml")
SLURM=(--profile "$REPO/workflow/profiles/slurm" --profile "$REPO/workflow/profiles/slurm-ci")
"$PY" -c "import snakemake_executor_plugin_slurm" \
    || fail "snakemake-executor-plugin-slurm is not installed in $PY (pip install -e '.[test]')"

say "local run: ${TARGETS[*]}"
timeout -s KILL "$LIMIT" "${SMK[@]}" --directory "$WORK/local" --cores 2 "${TARGETS[@]}" \
    > "$WORK/local.log" 2>&1 \
    || { tail -n 30 "$WORK/local.log" >&2; fail "the local run failed"; }
say "local run done"

# --- Slurm run 1, with one tile job cancelled while it writes its store ------
say "Slurm run 1: ${TARGETS[*]}, one tile job to be cancelled"
SLURM_DIR=$WORK/slurm
timeout -s KILL "$LIMIT" "${SMK[@]}" "${SLURM[@]}" --directory "$SLURM_DIR" "${TARGETS[@]}" \
    > "$WORK/slurm-run1.log" 2>&1 &
run1=$!
victim="" victim_job=""
while kill -0 "$run1" 2>/dev/null && [[ -z $victim ]]; do
    for tmp in "$SLURM_DIR"/results/stores/.*.zarr.tmp-*; do
        [[ -e $tmp ]] || continue
        slide=$(basename "$tmp")
        slide=${slide#.}
        slide=${slide%%.zarr.tmp-*}
        job=$(squeue -h -t RUNNING -o '%i %k' | awk -v c="rule_tile_wildcards_$slide" '$2 == c {print $1}')
        if [[ -n $job ]]; then
            scancel "$job"
            victim=$slide victim_job=$job
            say "scancel $job: tile of $slide, store half written ($(basename "$tmp"))"
            break
        fi
    done
    sleep 0.2
done
rc1=0
wait "$run1" || rc1=$?
[[ -n $victim ]] || fail "no tile job was caught mid-run to cancel (see $WORK/slurm-run1.log)"
[[ $rc1 -ne 0 ]] || fail "Slurm run 1 succeeded although job $victim_job was cancelled"
[[ $rc1 -ne 137 ]] || fail "Slurm run 1 hung and was killed after ${LIMIT}s"
state=$(squeue -h --states=all -j "$victim_job" -o %T)
[[ $state == CANCELLED ]] || fail "job $victim_job is $state, not CANCELLED"
grep -q "SLURM-job '$victim_job' failed" "$WORK/slurm-run1.log" \
    || fail "Snakemake did not report the cancelled job $victim_job as failed"
# Only the cancelled slide's own jobs are missing.
[[ ! -e $SLURM_DIR/results/stores/$victim.zarr ]] \
    || fail "a store appeared for $victim although its job was cancelled"
[[ ! -e $SLURM_DIR/results/labels/$victim.parquet ]] || fail "$victim was labelled without a store"
slides=$(cut -f1 "$SLURM_DIR/demo/samples.tsv" | tail -n +2)
for s in $slides; do
    [[ $s == "$victim" ]] && continue
    [[ -e $SLURM_DIR/results/stores/$s.zarr && -e $SLURM_DIR/results/labels/$s.parquet ]] \
        || fail "slide $s is incomplete after run 1: the cancellation failed more than its own job"
done
say "run 1 failed as it should (exit $rc1): only $victim's store and what needs it are missing"

# --- Slurm run 2: resume ---------------------------------------------------
say "Slurm run 2: resume"
timeout -s KILL "$LIMIT" "${SMK[@]}" "${SLURM[@]}" --directory "$SLURM_DIR" "${TARGETS[@]}" \
    > "$WORK/slurm-run2.log" 2>&1 \
    || { tail -n 40 "$WORK/slurm-run2.log" >&2; fail "Slurm run 2 (resume) failed"; }
grep -q "rule_tile/$victim/" "$WORK/slurm-run2.log" \
    || fail "run 2 did not redo the tile job of $victim"
if grep -E "rule_(demo|tissue)/" "$WORK/slurm-run2.log" >/dev/null; then
    fail "run 2 redid jobs that had finished in run 1"
fi
say "run 2 done: redid $victim's tile job and what depends on it"

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
