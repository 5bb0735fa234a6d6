#!/usr/bin/env bash
# The EPD-Solver / EPD-Plugin recipe study of docs/RESULTS.md ("EPD-Solver on the bundled model"; any model
# checkpoint), on a CUDA GPU:
#
#   benchmarks/epd_study.sh distill WORK CKPT [INCEPTION]      # tables into WORK/{published,ipndm}/
#   benchmarks/epd_study.sh eval WORK CKPT DATA INCEPTION      # FID + RMSE into WORK/RECIPE-STUDENT.json, .md
#
# distill trains EPD-Solver (`epd`) and EPD-Plugin on iPNDM (`epd_ipndm`) (STUDENTS narrows) for each NFE in NFES (default
# "3 5 7 9") and each recipe in RECIPES (default "published ipndm"): the published recipe
# (`amed-deploy distill --student ...` defaults; with INCEPTION, its final-step Inception-feature loss)
# into WORK/published, and the teacher this project found best for AMED (iPNDM, M = 5, one sub-step; all
# else the same) into WORK/ipndm. Runs go JOBS (default 4) at a time on the one GPU: each is
# launch-bound at the recipe's small batches (COMPILE=1 adds `distill --compile`). eval measures every table found as `amed-deploy eval`
# does, with the same seeds as the other tables of docs/RESULTS.md. Both resume: run again until done
# (e.g. NFES=5 first to choose the recipe, then RECIPES=<winner> for the rest).
set -euo pipefail
step=$1
work=$2
ckpt=$3
cli=${CLI:-"python3 -m amed_deploy.cli"}
case $step in
distill)
  inception=${4:+--inception $4}${COMPILE:+ --compile}
  mkdir -p "$work/published" "$work/ipndm"
  jobs=()
  for student in ${STUDENTS:-epd epd_ipndm}; do
    for nfe in ${NFES:-3 5 7 9}; do
      for recipe in ${RECIPES:-published ipndm}; do
        case $recipe in
        published) jobs+=("published $student $nfe") ;;
        ipndm) jobs+=("ipndm $student $nfe --teacher ipndm --teacher-m 5 --teacher-inner 1") ;;
        *) echo "unknown recipe $recipe: published or ipndm" >&2; exit 2 ;;
        esac
      done
    done
  done
  printf '%s\n' "${jobs[@]}" | OMP_NUM_THREADS=2 xargs -P "${JOBS:-4}" -L 1 sh -c '
    recipe=$1 student=$2 nfe=$3; shift 3
    out="'"$work"'/$recipe/$student$nfe.pt"
    [ -e "$out" ] || '"$cli"' distill --ckpt "'"$ckpt"'" --nfe "$nfe" --student "$student" --out "$out" \
      --device cuda '"$inception"' "$@" > "'"$work"'/$recipe/$student$nfe.log" 2>&1 \
      || echo "failed: $out (log beside it)"' sh
  ;;
eval)
  for recipe in published ipndm; do
    for student in epd epd_ipndm; do  # the tables distilled so far (a partial study is measured as far as it got)
      nfes=$(cd "$work/$recipe" 2>/dev/null && ls $student[0-9].pt 2>/dev/null | sed "s/^$student//; s/\.pt$//" | paste -sd,) || true
      [ -n "$nfes" ] || continue
      $cli eval --ckpt "$ckpt" --data "$4" --inception "$5" --solvers $student --nfe "$nfes" \
        --predictor-dir "$work/$recipe" --predictors "$student{nfe}.pt" \
        --num 10000 --batch 1000 --fd-method eigh --device cuda --stats-cache "$work/train-stats.npz" \
        --out "$work/$recipe-$student.json" --markdown "$work/$recipe-$student.md" --resume --force  # --force: its own .md of the last run
    done
  done
  ;;
*)
  echo "usage: $0 distill WORK CKPT [INCEPTION] | eval WORK CKPT DATA INCEPTION" >&2
  exit 2
  ;;
esac
