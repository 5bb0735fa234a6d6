#!/usr/bin/env bash
# The comparison of published solver formulas and the project's own variants in docs/RESULTS.md
# ("Published formulas and our variants"), on the bundled model and a CUDA GPU:
#
#   benchmarks/solver_variants.sh distill WORK                    # 12 predictors into WORK/pred
#   benchmarks/solver_variants.sh eval WORK DATA INCEPTION        # FID + RMSE table into WORK
#
# distill trains the published AMED-Plugin on iPNDM, DPM-Solver-2 and DPM-Solver++ for NFE 3/5/7/9 with
# the bundled predictors' recipe (`amed-deploy distill` defaults: time_uniform, AFS, iPNDM teacher with
# M = 5, 10 kimg); eval measures them next to the bundled AMED-Solver and uneven-grid plugin predictors
# and the training-free solvers, as `amed-deploy eval` does. Both resume: run again until done.
set -euo pipefail
step=$1
work=$2
cli=${CLI:-"python3 -m amed_deploy.cli"}
mkdir -p "$work/pred"
case $step in
distill)
  for student in amed_ipndm amed_dpmpp amed_dpm2; do
    for nfe in 3 5 7 9; do
      out="$work/pred/${student}${nfe}.pt"
      [ -e "$out" ] || $cli distill --ckpt fashion-mnist --nfe "$nfe" --student "$student" --out "$out" --device cuda
    done
  done
  ;;
eval)
  cp -n amed_deploy/assets/amed*.pt "$work/pred/"
  $cli eval --ckpt fashion-mnist --data "$3" --inception "$4" \
    --solvers amed_ipndm,amed_ipndm_uneven,dpmpp3m,dpmpp3m_exact,amed_dpmpp,lms,dpmpp2m,amed_dpm2,ipndm,amed \
    --nfe 3,5,7,9 --predictor-dir "$work/pred" \
    --predictors "amed{nfe}.pt,amed_dpm2{nfe}.pt,amed_ipndm{nfe}.pt,amed_ipndm_uneven{nfe}.pt,amed_dpmpp{nfe}.pt" \
    --num 10000 --batch 1000 --fd-method eigh --device cuda \
    --stats-cache "$work/train-stats.npz" --out "$work/variants.json" --markdown "$work/variants.md" --resume --force  # --force: its own .md of the last run
  ;;
*)
  echo "usage: $0 distill WORK | eval WORK DATA INCEPTION" >&2
  exit 2
  ;;
esac
