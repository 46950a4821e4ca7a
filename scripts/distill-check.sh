#!/usr/bin/env bash
# Knowledge distillation, measured (README, "Distillation"): the tutorial's CNN distilled from
# a fine-tuned ResNet-18 against the same CNN trained alone, same recipe and seeds, on the
# generated texture set (`make_cifar ... textures`: 1,000 training and 1,000 test images).
#
#   scripts/distill-check.sh RESNET18.safetensors [OUT]
#
# RESNET18: the weights the teacher is fine-tuned from (ImageNet weights from the registry,
# or the parity fixture ../shared/fixtures/torchvision-parity/resnet18.safetensors, which is
# torchvision's random initialisation). Prints one line per run and the means; T, ALPHA,
# EPOCHS, SEEDS and TEACHER_EPOCHS override the defaults from the environment; TEACHER=RUN
# reuses a teacher trained before (another OUT's `teacher`).
set -euo pipefail
weights=${1:?usage: scripts/distill-check.sh RESNET18.safetensors [OUT]}
out=${2:-runs/distill-check}
T=${T:-4}
ALPHA=${ALPHA:-0.5}
EPOCHS=${EPOCHS:-30}
SEEDS=${SEEDS:-"1 2 3"}
TEACHER_EPOCHS=${TEACHER_EPOCHS:-30}
teacher=${TEACHER:+$(realpath -e "$TEACHER")}
cd "$(dirname "$0")/.."
cargo build --release -q -p cv-cli
cargo build --release -q -p cv-testkit --example make_cifar
target=${CARGO_TARGET_DIR:-target}
cv=$target/release/cv
data=$("$target/release/examples/make_cifar" "$out/data" 200 1000 textures)
accuracy() { grep -o 'test accuracy [0-9.]*' | grep -o '[0-9.]*$'; }
if [ -z "$teacher" ]; then
  teacher=$out/teacher
  [ -f "$teacher/model.safetensors" ] || $cv finetune --weights "$weights" --mode full --image-size 64 \
    --epochs "$TEACHER_EPOCHS" --batch-size 32 --data "$data" --quiet --out "$teacher" > /dev/null
fi
top1=$($cv eval --json --checkpoint "$teacher" --data "$data" 2> /dev/null |
  python3 -c 'import json,sys; print(round(json.load(sys.stdin)["accuracy"] * 100, 2))')
echo "teacher: $top1%"
alone=() taught=()
for seed in $SEEDS; do
  a=$($cv train --model cnn --epochs "$EPOCHS" --seed "$seed" --data "$data" --quiet \
    --out "$out/alone-$seed" | accuracy)
  d=$($cv distill --teacher "$teacher" --student cnn --temperature "$T" --alpha "$ALPHA" \
    --epochs "$EPOCHS" --seed "$seed" --data "$data" --quiet --out "$out/distill-$seed" | accuracy)
  echo "seed $seed: alone $a%, distilled (T $T, alpha $ALPHA) $d%"
  alone+=("$a") taught+=("$d")
done
mean() { printf '%s\n' "$@" | awk '{s += $1} END {printf "%.2f", s / NR}'; }
echo "mean of ${#alone[@]} seeds: alone $(mean "${alone[@]}")%, distilled $(mean "${taught[@]}")%"
