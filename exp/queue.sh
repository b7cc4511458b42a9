#!/bin/bash
# sequential collapse runs on core 1; each bounded by timeout; JSON per run in exp/
cd /work/stab/exp
B="nice -n 10 taskset -c 1 ../.venv/bin/crfgan bench collapse --iterations 1200 --eval-every 200 --budget-s 1500"
run() { name=$1; shift; echo "$(date -u +%T) start $name $*"; timeout 1700 $B --name $name --json $name.json "$@" > $name.log 2>&1; echo "$(date -u +%T) end $name rc=$?"; }
run stab_all train.instance_noise=0.1 train.instance_noise_iters=1200 train.r1_gamma=1 train.r1_every=4 train.ema_decay=0.999
run baseline
run r1_ema train.r1_gamma=1 train.r1_every=4 train.ema_decay=0.999
run lr_balance train.lr_d=1e-4
