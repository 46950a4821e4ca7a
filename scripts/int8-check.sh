#!/usr/bin/env bash
# int8 accuracy, measured (README, "int8 on the CPU"): f32 checkpoints and their `cv quantize`
# int8 checkpoints evaluated on the same held-out test split, for the tutorial's CNN trained on
# the generated colour set and on the generated texture set, and ResNet-18 fine-tuned on the
# texture set; then the same two models on each image folder given after OUT (a real held-out
# set: `scripts/make_digits.py` writes one without a download).
#
#   scripts/int8-check.sh RESNET18.safetensors [OUT [DATA...]]
#
# RESNET18: ResNet-18 weights to fine-tune (a registry download, or the parity fixture
# ../shared/fixtures/torchvision-parity/resnet18.safetensors). Prints one JSON line per model:
# the f32 and int8 top-1 on the test split, and their difference in points. CALIBRATION and
# OBSERVER override the defaults (512, minmax) from the environment.
set -euo pipefail
weights=${1:?usage: scripts/int8-check.sh RESNET18.safetensors [OUT]}
out=${2:-runs/int8-check}
shift $(( $# < 2 ? $# : 2 ))
real=()
for data in "$@"; do real+=("$(realpath -e "$data")"); done
CALIBRATION=${CALIBRATION:-512}
OBSERVER=${OBSERVER:-minmax}
cd "$(dirname "$0")/.."
cargo build --release -q -p cv-cli
cargo build --release -q -p cv-testkit --example make_cifar
target=${CARGO_TARGET_DIR:-target}
cv=$target/release/cv
colours=$("$target/release/examples/make_cifar" "$out/colours" 200 1000 colours)
textures=$("$target/release/examples/make_cifar" "$out/textures" 200 1000 textures)
top1() { $cv eval --json --checkpoint "$1" --data "$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["accuracy"] * 100)'; }
check() { # NAME RUN DATA
  rm -rf "$out/$1-int8"
  $cv quantize --checkpoint "$2" --data "$3" --calibration "$CALIBRATION" --observer "$OBSERVER" \
    --out "$out/$1-int8" > /dev/null
  f=$(top1 "$2" "$3") q=$(top1 "$out/$1-int8" "$3")
  python3 -c "import json; print(json.dumps({'model': '$1', 'f32': round($f, 2), 'int8': round($q, 2), 'int8_minus_f32': round($q - $f, 2), 'calibration': $CALIBRATION, 'observer': '$OBSERVER'}))"
}
[ -f "$out/cnn-colours/model.safetensors" ] || $cv train --model cnn --epochs 10 --data "$colours" --quiet --out "$out/cnn-colours" > /dev/null
[ -f "$out/cnn-textures/model.safetensors" ] || $cv train --model cnn --epochs 30 --data "$textures" --quiet --out "$out/cnn-textures" > /dev/null
[ -f "$out/resnet18-textures/model.safetensors" ] || $cv finetune --weights "$weights" --mode full --image-size 32 \
  --epochs 8 --batch-size 32 --data "$textures" --quiet --out "$out/resnet18-textures" > /dev/null
check cnn-colours "$out/cnn-colours" "$colours"
check cnn-textures "$out/cnn-textures" "$textures"
check resnet18-textures "$out/resnet18-textures" "$textures"
for data in "${real[@]}"; do
  name=$(basename "$data")
  [ -f "$out/cnn-$name/model.safetensors" ] || $cv train --model cnn --epochs 30 --data "$data" --quiet --out "$out/cnn-$name" > /dev/null
  [ -f "$out/resnet18-$name/model.safetensors" ] || $cv finetune --weights "$weights" --mode full --image-size 32 \
    --epochs 8 --batch-size 32 --data "$data" --quiet --out "$out/resnet18-$name" > /dev/null
  check "cnn-$name" "$out/cnn-$name" "$data"
  check "resnet18-$name" "$out/resnet18-$name" "$data"
done
