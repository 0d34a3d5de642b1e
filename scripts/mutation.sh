#!/usr/bin/env bash
# Mutation testing: break the runtime code on purpose, one small change at a time, and see
# whether the quick loop notices. Slow (some minutes a module), so not in CI.
#
#   scripts/mutation.sh                          every runtime module
#   scripts/mutation.sh friendlyhello/site.py    only these
#
# It copies the working tree to a scratch folder (this checkout is left alone), installs
# mutmut (pinned) if it is missing, runs `mutmut run` there with the quick loop as the test
# command, and prints each module's score: mutants killed / mutants made. Survivors are listed
# with `cd "$FOLDER" && mutmut results`, each shown with `mutmut show NAME`. Two tests are left
# out of the runs: the port-80 test, which runs Debian's Python (without mutmut's trampoline),
# the layout test, which reads the mutated sources themselves, and the reply-nesting test,
# whose 200 levels the trampoline's extra stack frames take past Python's recursion limit.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
folder=${FOLDER:-$(mktemp -d /tmp/friendlyhello-mutation.XXXXXX)}
modules=("$@")
if [ ${#modules[@]} -eq 0 ]; then
  modules=(resp_client.py $(cd "$here" && ls friendlyhello/*.py | grep -v __init__))
fi

python3 -c "import mutmut" 2>/dev/null || python3 -m pip install -q "mutmut==3.8.1"

mkdir -p "$folder"
(cd "$here" && git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$folder")
cd "$folder"
rm -rf mutants
{
  echo "[mutmut]"
  echo "source_paths ="
  echo "    friendlyhello/"
  echo "    resp_client.py"
  echo "only_mutate ="
  for module in "${modules[@]}"; do echo "    $module"; done
  echo "also_copy ="
  for extra in pytest.ini README.md docs/ hello_server.py Dockerfile compose.yaml stack.yaml k8s/ scripts/ \
               requirements-dev.txt .dockerignore; do echo "    $extra"; done
  echo "pytest_add_cli_args ="
  printf '    %s\n' -m "not slow and not container" -k "not port_80_refused and not nested" \
    --ignore=tests/test_layout.py
} > setup.cfg

mutmut run --max-children "$(nproc)" >mutmut.log 2>&1 || { tail -c 3000 mutmut.log; exit 1; }

python3 - "${modules[@]}" <<'PY'
import json, os, sys
KILLED, TIMEOUT, SURVIVED, UNTESTED = {1, 3}, {36, -24, 24, 152, 255}, {0}, {5, 33, None}
print(f"{'module':36} {'mutants':>8} {'killed':>7} {'timeout':>8} {'survived':>9} {'no test':>8} {'score':>7}")
for module in sys.argv[1:]:
    codes = list(json.load(open(os.path.join("mutants", module + ".meta")))["exit_code_by_key"].values())
    count = {name: sum(1 for c in codes if c in kinds)
             for name, kinds in (("killed", KILLED), ("timeout", TIMEOUT), ("survived", SURVIVED), ("untested", UNTESTED))}
    score = (count["killed"] + count["timeout"]) / max(len(codes), 1)  # a mutant that hangs the tests is caught
    print(f"{module:36} {len(codes):8d} {count['killed']:7d} {count['timeout']:8d} {count['survived']:9d} "
          f"{count['untested']:8d} {score:7.1%}")
PY
echo "mutation: survivors in $folder (cd there; mutmut results; mutmut show NAME)"
