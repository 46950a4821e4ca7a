#!/usr/bin/env bash
# The few-shot recipe grid behind `cv_train::config::finetune_lr` and the README's few-shot
# advice (docs/benchmarks.md, 2026-12-03): `cv finetune --mode full` from the parity ResNet-18
# on the generated learnable CIFAR-format set (1,000 train images) and on its first 40 and 100
# training images, 3 seeds each; the final and best test accuracy of every recipe.
#
#   scripts/finetune-recipes.sh [OUT_DIR]      (env LIMITS="40 100 1000", NAMES="base kit ...")
#
# Needs a release build (`cargo build --release -p cv-cli -p cv-testkit --examples`) and
# ../shared/fixtures. Runs are skipped when their folder is complete, so it can be resumed.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}/release
weights=../shared/fixtures/torchvision-parity/resnet18.safetensors
out=${1:-runs/recipes}
data=$out/data
mkdir -p "$out"
[ -d "$data" ] || "$target/examples/make_cifar" "$data" 200 1000
kit="--auto-augment trivial --mixup 0.2 --cutmix 1.0 --ema-decay 0.99 --label-smoothing 0.1"
declare -A recipe=(
  [base]="--lr 0.1" [ta]="--lr 0.1 --auto-augment trivial" [mix]="--lr 0.1 --mixup 0.2 --cutmix 1.0"
  [ema]="--lr 0.1 --ema-decay 0.99" [kit]="--lr 0.1 $kit"
  [base_e30]="--lr 0.1 --epochs 30" [kit_e30]="--lr 0.1 $kit --epochs 30"
  [base_lr01]="--lr 0.01" [kit_lr01]="--lr 0.01 $kit"
  [base_lr01_e30]="--lr 0.01 --epochs 30" [kit_lr01_e30]="--lr 0.01 $kit --epochs 30"
  [bs16]="--lr 0.1 --batch-size 16" [bs16_lr01]="--lr 0.01 --batch-size 16"
  [kit_bs16_lr01]="--lr 0.01 --batch-size 16 $kit"
)
for n in ${LIMITS:-40 100 1000}; do
  for name in ${NAMES:-${!recipe[@]}}; do
    for seed in 0 1 2; do
      run=$out/runs/n$n-$name-s$seed
      [ -f "$run/done" ] && continue
      rm -rf "$run" && mkdir -p "$run"
      # shellcheck disable=SC2086 # the recipe is a list of flags
      "$target/cv" finetune --mode full --weights "$weights" --data "$data" --image-size 32 \
        --limit-test 500 --limit-train "$n" --seed "$seed" --out "$run" --quiet ${recipe[$name]} \
        > "$run.log" 2>&1 && touch "$run/done"
      echo "n=$n $name seed $seed: $(tail -1 "$run.log")"
    done
  done
done
python3 - "$out/runs" <<'PY'
import glob, json, os, statistics, sys
rows = {}
for run in glob.glob(os.path.join(sys.argv[1], "n*-s*/done")):
    name = os.path.basename(os.path.dirname(run))
    n, rest = name.split("-", 1)
    recipe, seed = rest.rsplit("-s", 1)
    epochs = [json.loads(l) for l in open(os.path.join(os.path.dirname(run), "metrics.jsonl"))]
    accs = [e["test_acc"] for e in epochs if "test_acc" in e]
    rows.setdefault((int(n[1:]), recipe), []).append((int(seed), accs[-1], max(accs)))
for (n, recipe), v in sorted(rows.items()):
    v.sort()
    final = [x[1] for x in v]
    print(f"{n:5d} {recipe:14s} final {' '.join(f'{x:.3f}' for x in final)}"
          f"  mean {statistics.mean(final):.3f}  best epoch mean {statistics.mean(x[2] for x in v):.3f}")
PY
