# FSDD leave-one-speaker-out ablations fold by fold, many at once (a GPU machine's spare cores):
# every (change, fold) is a job running benchmarks/ablate.py in its own copy of benchmarks/ (so
# their ablations.json files don't race). When the jobs end (or BUDGET_S runs out: keep it under
# the machine's own time limit) their rows are merged into $OUT/ablations.json and their output
# into $OUT/sweep.log — two files, as a lent GPU machine returns only a few — to be added here
# with `python benchmarks/ablate.py --merge $OUT/ablations.json`.
#
#   CHANGES="-|mixup=0.2" DATA=../shared/data bash benchmarks/sweep_folds.sh BUDGET_S JOBS DEVICE [EXTRA]
#
# CHANGES: '|'-separated changes ('-' = the defaults; k=v,k=v for several fields); FOLDS: the
# speakers (default all six); EXTRA: one more k=v for every job. On a lent GPU machine the
# wheels in .whl/ (soundfile, soxr and their dependencies, for that machine's Python) are
# installed first into /tmp/site.
BUDGET=${1:-480}; JOBS=${2:-12}; DEV=${3:-cuda}; EXTRA=${4:-}
T0=$(date +%s)
if [ -d .whl ] && [ ! -x .venv/bin/python ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src
  PY=python3
else
  PY=$PWD/.venv/bin/python; export PYTHONPATH=$PWD/src
fi
[ "$DEV" = cuda ] && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 PYTHONWARNINGS=ignore
OUT=${OUT:-/tmp/sweep_out}; mkdir -p $OUT
CACHE=/tmp/avcache_sweep; DATA=$(realpath ${DATA:-.gpudata}); REPO=$PWD
$PY - <<PYEOF
import time, csv
from audiovit.features import FeatureCache, LogMel
from audiovit.train import TrainConfig
t=time.time(); rows=list(csv.DictReader(open("$DATA/fsdd/manifest.csv")))
c=FeatureCache("$CACHE", LogMel(TrainConfig().feature_config()))
import torch; torch.set_num_threads(8)
n=sum(1 for _ in c.get_many(["$DATA/fsdd/"+r["path"] for r in rows], workers=8))
print(f"cache: {n} files in {time.time()-t:.0f} s", flush=True)
PYEOF
CHANGES=${CHANGES:-"-|mixup=0|freq_mask=0.2,time_mask=0.2|epochs=20|epochs=60"}
WORK=$(mktemp -d); : > $WORK/jobs
IFS='|' read -ra CH <<< "$CHANGES"
for c in "${CH[@]}"; do for f in ${FOLDS:-george jackson lucas nicolas theo yweweler}; do echo "$c $f" >> $WORK/jobs; done; done
job() {
  c=$1; f=$2; id=$(echo "$c-$f" | sed 's/[,=.]/_/g; s/^-$/defaults/; s/^--/defaults-/'); w=$WORK/$id
  mkdir -p $w && cp -r $REPO/benchmarks $w/ && rm -f $w/benchmarks/results/ablations.json
  sets="--set device=\"$DEV\""; [ "$c" != "-" ] && for kv in ${c//,/ }; do sets="$sets --set $kv"; done
  [ -n "$EXTRA" ] && sets="$sets --set $EXTRA"
  t=$(date +%s)
  eval $PY $w/benchmarks/ablate.py fsdd-speaker --folds $f $sets --data $DATA --cache-dir $CACHE > $w/log.txt 2>&1
  echo "$id rc=$? $(( $(date +%s) - t )) s $(tail -1 $w/log.txt)"
}
export -f job; export PY DEV EXTRA OUT CACHE DATA REPO WORK
LEFT=$(( BUDGET - ($(date +%s) - T0) )); [ $LEFT -lt 1 ] && LEFT=1
timeout $LEFT xargs -P $JOBS -L 1 bash -c 'job $0 $1' < $WORK/jobs
echo "total $(( $(date +%s) - T0 )) s"
$PY - "$WORK" "$OUT" <<'PYEOF'
import glob, json, sys
work, out = sys.argv[1:]
rows = {}
for f in sorted(glob.glob(f"{work}/*/benchmarks/results/ablations.json")):
    rows.update(json.load(open(f)))
json.dump(rows, open(f"{out}/ablations.json", "w"), indent=2)
with open(f"{out}/sweep.log", "w") as log:
    for f in sorted(glob.glob(f"{work}/*/log.txt")):
        log.write(f"== {f.split('/')[-2]}\n" + open(f).read()[-4000:] + "\n")
print(f"{len(rows)} rows in {out}/ablations.json")
PYEOF
