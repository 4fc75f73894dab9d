#!/usr/bin/env bash
# One line of the NoteLLM v4 ablation log (models/ablations/v4.jsonl) from a finished run's
# train.json: the options that matter, the wall minutes of every invocation (frozen pass, steps,
# validation and saving; on the 2-core machine named, nothing else running), the frozen pass's
# notes/s, the steps' pairs/s and the last validation's Recall@k.
#
#   scripts/ablation_row.sh RUN_NAME TRAIN_JSON "MACHINE" [TEACHER] >> models/ablations/v4.jsonl
#
# TEACHER names the --distill teacher (e.g. "minilm-ft-holdout"), "-" or absent when none.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 RUN_NAME TRAIN_JSON MACHINE [TEACHER]" >&2
  exit 2
fi
name=$1 json=$2 machine=$3 teacher=${4:--}
[ -f "$json" ] || { echo "$json: no such file" >&2; exit 1; }
jq -c --arg name "$name" --arg machine "$machine" --arg teacher "$teacher" '
  . as $t
  | ($t.runs | map(.frozen.computed) | add) as $frozen_notes
  | ($t.runs | map(.frozen.seconds) | add) as $frozen_s
  | ($t.runs | map(.step_seconds) | add) as $step_s
  | ($t.history | last) as $v
  | {
      run: $name,
      objective: $t.options.objective,
      train_layers: (if $t.options.objective == "encoder" then "all" else $t.options.train_layers end),
      pairs_per_step: $t.options.pairs_per_step,
      max_notes: $t.options.max_notes,
      max_pairs: $t.options.max_pairs,
      lr: $t.options.lr,
      tau_init: $t.options.tau_init,
      alpha: (if $t.options.objective == "encoder" then null else $t.options.alpha end),
      distill: (if $teacher == "-" then null else {teacher: $teacher, weight: $t.options.distill_weight} end),
      steps: $t.step,
      pairs_trained: ($t.step * $t.options.pairs_per_step * $t.options.accumulation),
      wall_minutes: (($t.runs | map(.seconds) | add) / 60 * 100 | round / 100),
      frozen_notes_per_s: (if $frozen_s > 0 then ($frozen_notes / $frozen_s * 100 | round / 100) else null end),
      pairs_per_s: (if $step_s > 0 then (($t.step * $t.options.pairs_per_step * $t.options.accumulation) / $step_s * 100 | round / 100) else null end),
      val: {
        pairs: $v.pairs,
        pool: $v.pool,
        recall: ($v.recall | map({key: ("R@" + (.[0] | tostring)), value: (.[1] * 10000 | round / 100)}) | from_entries)
      },
      machine: $machine
    }' "$json"
