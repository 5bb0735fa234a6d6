#!/usr/bin/env bash
# Every learned solver's predictors for a model, and its full quality table (docs/RESULTS.md), on a CUDA GPU:
#
#   benchmarks/model_tables.sh distill WORK CKPT INCEPTION       # predictors into WORK/amed, WORK/{published,ipndm}
#   benchmarks/model_tables.sh eval WORK CKPT DATA INCEPTION     # WORK/pred (the kept ones), WORK/table.{json,md}
#
# distill trains, for each NFE in NFES (default "3 5 7 9"): the AMED-Solver and the AMED-Plugins on iPNDM
# (published and uneven-grid weights) and on DPM-Solver++, with `amed-deploy distill`'s defaults (one lane
# per student, its NFEs one after another); beside them, JOBS (default 4) at a time through epd_study.sh,
# the EPD-Solver and the EPD-Plugin (iPNDM) with the recipe that won at that NFE on the bundled
# Fashion-MNIST model (EPD-Solver: published at NFE 3, iPNDM teacher above; EPD-Plugin: published at 3 and
# 5, iPNDM teacher above) and both recipes at NFE 5. eval measures the EPD recipes (epd_study.sh eval),
# keeps the lower-FID table of each student and NFE in WORK/pred beside the AMED predictors, then measures
# every training-free solver and every kept predictor as `amed-deploy eval` does (10,000 samples, same
# seeds as the other tables). Both resume: run again until done.
set -euo pipefail
step=$1
work=$2
ckpt=$3
here=$(cd "$(dirname "$0")" && pwd)
cli=${CLI:-"python3 -m amed_deploy.cli"}
nfes=${NFES:-3 5 7 9}
amed_students="amed amed_ipndm amed_ipndm_uneven amed_dpmpp"
case $step in
distill)
  inception=$4
  mkdir -p "$work/amed"
  for student in $amed_students; do
    (
      for nfe in $nfes; do
        out="$work/amed/$student$nfe.pt"
        [ -e "$out" ] || OMP_NUM_THREADS=2 $cli distill --ckpt "$ckpt" --nfe "$nfe" --student "$student" \
          --out "$out" --device cuda > "$work/amed/$student$nfe.log" 2>&1 || echo "failed: $out (log beside it)"
      done
    ) &
  done
  study() { STUDENTS=$1 NFES=$2 RECIPES=$3 JOBS=${4:-1} bash "$here/epd_study.sh" distill "$work" "$ckpt" "$inception"; }
  study "epd epd_ipndm" 5 "published ipndm" 4 &
  study "epd epd_ipndm" 3 published 2 &
  study "epd epd_ipndm" "7 9" ipndm "${JOBS:-4}" &
  wait
  ;;
eval)
  data=$4
  inception=$5
  bash "$here/epd_study.sh" eval "$work" "$ckpt" "$data" "$inception"
  mkdir -p "$work/pred"
  cp "$work"/amed/*.pt "$work/pred/" 2>/dev/null || true
  python3 - "$work" <<'EOF'
import json, shutil, sys
from pathlib import Path

work = Path(sys.argv[1])
best = {}  # (student, nfe) -> (fid, file)
for student in ("epd", "epd_ipndm"):
    for recipe in ("published", "ipndm"):
        table = work / f"{recipe}-{student}.json"
        if table.exists():
            for cell in json.loads(table.read_text())["cells"]:
                key = (student, cell["nfe"])
                if cell.get("fid") is not None and (key not in best or cell["fid"] < best[key][0]):
                    best[key] = (cell["fid"], work / recipe / f"{student}{cell['nfe']}.pt")
for (student, nfe), (fid, path) in sorted(best.items()):
    shutil.copyfile(path, work / "pred" / path.name)
    print(f"kept {path.parent.name}/{path.name} (FID {fid:.2f})")
EOF
  $cli eval --ckpt "$ckpt" --data "$data" --inception "$inception" \
    --solvers euler,heun,dpm2,ipndm,dpmpp3m,dpmpp3m_exact,amed,amed_ipndm,amed_ipndm_uneven,amed_dpmpp,epd,epd_ipndm \
    --nfe "$(echo $nfes | tr ' ' ,)" --predictor-dir "$work/pred" \
    --num 10000 --batch 1000 --fd-method eigh --device cuda --stats-cache "$work/train-stats.npz" \
    --out "$work/table.json" --markdown "$work/table.md" --resume --force  # --force: its own .md of the last run
  ;;
*)
  echo "usage: $0 distill WORK CKPT INCEPTION | eval WORK CKPT DATA INCEPTION" >&2
  exit 2
  ;;
esac
