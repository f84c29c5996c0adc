#!/bin/sh
# run.sh DIR SECONDS TARGET... — runs each libFuzzer binary DIR/TARGET for
# SECONDS, one process on one core, from its committed seeds
# (tests/fuzz/corpus/TARGET) and regression inputs (tests/fuzz/regress/TARGET),
# with the words of tests/fuzz/dict/TARGET.dict when there is one.
# New interesting inputs go to DIR/corpus/TARGET, a crashing input to
# DIR/crashes/TARGET/, the log to DIR/TARGET.log. Prints one line per target
# (executions, crashes) and exits 1 if any target crashed. Run from the
# repository root (the targets load models/ from there).
dir=$1; secs=$2; shift 2
status=0
for t in "$@"; do
  case $t in
    completion|multipart|tokenizer) max_len=4096 ;;
    dataset|tokenizer_load) max_len=8192 ;;
    gguf|peft|safetensors) max_len=16384 ;;
    *) max_len=65536 ;; # prefix and the model loaders: valid seeds of 20-40 KB
  esac
  work=$dir/corpus/$t
  crashes=$dir/crashes/$t
  mkdir -p "$work" "$crashes"
  set -- "$work" "tests/fuzz/corpus/$t"
  [ -d "tests/fuzz/regress/$t" ] && set -- "$@" "tests/fuzz/regress/$t"
  [ -f "tests/fuzz/dict/$t.dict" ] && set -- -dict="tests/fuzz/dict/$t.dict" "$@"
  "$dir/$t" -max_total_time="$secs" -max_len=$max_len -rss_limit_mb=2048 -timeout=20 \
    -print_final_stats=1 -artifact_prefix="$crashes/" "$@" >"$dir/$t.log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/$t.log" | tail -n 1)
  if [ -z "$execs" ]; then # a crash ends the run before the final stats
    execs=$(sed -n 's/^#\([0-9][0-9]*\).*/\1/p' "$dir/$t.log" | tail -n 1)
  fi
  n_crash=$(ls "$crashes" | wc -l)
  units=$(ls "$work" | wc -l)
  printf '%-15s %10s execs  %3d crashes  %5d corpus  (%s)\n' "$t" "${execs:-0}" "$n_crash" \
    "$units" "$dir/$t.log"
  if [ $rc -ne 0 ] || [ "$n_crash" -ne 0 ]; then
    status=1
    ls "$crashes" | sed "s|^|    $crashes/|"
  fi
done
exit $status
