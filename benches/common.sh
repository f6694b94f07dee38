# Sourced by the benchmark scripts: the repository (`here`), the binary (`bin`: $SHARD_TRAIN,
# else this checkout's release build), a work directory (`work`) removed at exit, a preset's
# config and vocabulary, and a run on several ranks through launch/local.sh.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${SHARD_TRAIN:-$here/target/release/shard-train}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# preset_config PRESET: the config.json of tests/fixtures/presets/PRESET.
preset_config() {
  echo "$here/tests/fixtures/presets/$1/config.json"
}

# vocab_of CONFIG_JSON: its vocab_size.
vocab_of() {
  python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['vocab_size'])" "$1"
}

# train_ranks WORLD CONFIG LOG [ARGS...]: `shard-train train --config CONFIG ARGS` on WORLD ranks,
# its output in LOG, printed (and the script ended) if it fails.
train_ranks() {
  local world=$1 config=$2 log=$3
  shift 3
  SHARD_TRAIN=$bin "$here/launch/local.sh" "$world" train --config "$config" "$@" > "$log" 2>&1 || { cat "$log" >&2; exit 1; }
}
