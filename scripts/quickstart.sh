#!/usr/bin/env bash
# The README's first command: from a fresh clone to the quickstart's results. Installs the one
# system package bert-native builds against (HDF5's headers, through scripts/install-deps.sh),
# builds bert-native in release mode and runs `bert-native quickstart` in ./quickstart; arguments
# go to the quickstart (`scripts/quickstart.sh --help` lists them); a relative --output-dir is
# relative to the repository's root.
set -euo pipefail
cd "$(dirname "$0")/.."
case " $* " in
  *" -h "* | *" --help "*) ;;
  *) scripts/install-deps.sh quickstart ;;
esac
exec cargo run --release --locked -p bert-native -- quickstart "$@"
