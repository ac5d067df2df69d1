#!/usr/bin/env bash
# The main job on the bundled default (MiniLM + SST-2). Extra arguments go to `spin-cache run`.
. "$(dirname "$0")/env.sh"
spin-cache run pipelines/minilm-sst2.toml "$@"
