#!/usr/bin/env bash
# `make corpus`: install the rendering tools (programs and soundfonts, not training data) and the
# data-build extra (music21, mido), then let `haaqi corpus` fetch the corpus packages into
# $CORPUS_DIR (default data/corpus) without installing them, keep their music, render MIDI, tracker
# modules, raw PCM and music21 scores to 44.1 kHz FLAC, and print tracks and minutes per package.
# Idempotent and resumable; exits non-zero naming any package that yields no music.
#
# The package list lives in haaqicli.data.packages; reserved evaluation packages are never fetched.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CORPUS="${CORPUS_DIR:-$ROOT/data/corpus}"
VENV="${VENV:-$ROOT/.venv}"
WORKERS="${WORKERS:-2}"

if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
TOOLS=(ffmpeg fluidsynth fluid-soundfont-gm timgm6mb-soundfont musescore-general-soundfont)
missing=()
for pkg in "${TOOLS[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Capture first: with pipefail, `grep -q` closing the pipe early makes ffmpeg's SIGPIPE fail the test.
formats="$(ffmpeg -hide_banner -formats 2>/dev/null || true)"
if ! grep -qi libopenmpt <<<"$formats"; then
  echo "install-corpus: this ffmpeg cannot read tracker modules (no libopenmpt)" >&2
  exit 1
fi

"$VENV/bin/pip" install -q --disable-pip-version-check -c "$ROOT/constraints.txt" -e "$ROOT[corpus]"
mkdir -p "$CORPUS"
exec "$VENV/bin/haaqi" corpus --corpus "$CORPUS" --workers "$WORKERS" "$@"
