#!/bin/sh
# Runs each unit-test binary given as an argument (one process per module),
# from the repository root, and prints one closing line "N passed, N failed".
pass=0; fail=0
for t in "$@"; do
  if "$t"; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAILED: $t"; fi
done
echo "unit: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
