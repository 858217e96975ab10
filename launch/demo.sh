#!/usr/bin/env bash
# README command 1, the main job on 2 CPU cores: install, build, tokenise the fortunes corpus,
# dry-run a plan, train a small model and show its validation loss falling.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
launch/install-deps.sh
launch/build.sh
mm=build/launch/metamorph
$mm version
