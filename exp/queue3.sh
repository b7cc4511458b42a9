#!/bin/bash
# after baseline: shorter (800-iteration) variants, sequential on core 1, each bounded by timeout
cd /work/stab/exp
while pgrep -f "name baseline" > /dev/null; do sleep 5; done
echo "$(date -u +%T) baseline finished"
B="nice -n 10 taskset -c 1 ../.venv/bin/crfgan bench collapse --iterations 800 --eval-every 200 --budget-s 1500"
run() { name=$1; shift; echo "$(date -u +%T) start $name $*"; timeout 1700 $B --name $name --json $name.json "$@" > $name.log 2>&1; echo "$(date -u +%T) end $name rc=$?"; }
run d256 model.d_channels=256
run d256_r1_ema model.d_channels=256 train.r1_gamma=10 train.r1_every=4 train.ema_decay=0.999
run r1g10 train.r1_gamma=10 train.r1_every=4
run crf0 train.crf_weight_start=0
