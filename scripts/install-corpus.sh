#!/usr/bin/env bash
# Fetch the training-music Debian packages into data/corpus/ without installing them, keep only
# audio files, and render the MIDI packages to 44.1 kHz FLAC with fluidsynth. Idempotent: a
# package with a .done marker is skipped, a rendered file that exists is not rendered again.
#
# The package list must match haaqicli.data.packages (TRAIN_PACKAGES / MIDI_PACKAGES); reserved
# evaluation packages (widelands-data, openclonk-data, ...) are never fetched here.
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CORPUS="${CORPUS_DIR:-$ROOT/data/corpus}"
DEBS="$CORPUS/debs"
PKGS="$CORPUS/packages"
RENDERED="$CORPUS/rendered"
LOG="$CORPUS/install-log.tsv"
mkdir -p "$DEBS" "$PKGS" "$RENDERED"

AUDIO_PACKAGES=(
  wesnoth-1.16-music naev-data supertux-data hedgewars-data colobot-common-sounds singularity-music
  supertuxkart-data marsshooter-data freedroidrpg-data flare-game pushover-data megaglest-data
  starfighter-data warmux-data
)
MIDI_PACKAGES=(simutrans-data openttd-openmsx freedink-data)

if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi

# Rendering tools are real installs (they are programs, not training data).
if ! command -v fluidsynth >/dev/null 2>&1 || [ ! -e /usr/share/sounds/sf2/FluidR3_GM.sf2 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    fluidsynth fluid-soundfont-gm || echo "install-corpus: could not install fluidsynth/fluid-soundfont-gm" >&2
fi

log() { printf '%s\t%s\t%s\n' "$(date -Iseconds)" "$1" "$2" >>"$LOG"; echo "install-corpus: $1: $2"; }

# Keep audio (and MIDI) only: game data is mostly textures and models we do not need.
prune() {
  find "$1" -type f ! \( -iname '*.ogg' -o -iname '*.oga' -o -iname '*.wav' -o -iname '*.flac' \
    -o -iname '*.mp3' -o -iname '*.opus' -o -iname '*.mid' -o -iname '*.midi' \) -delete
  find "$1" -depth -type d -empty -delete
  # Symlinks to other packages' files would dangle; drop them.
  find "$1" -type l -delete
}

fetch() {
  local pkg="$1" dest="$PKGS/$1"
  if [ -e "$dest/.done" ]; then echo "install-corpus: $pkg: already extracted"; return 0; fi
  if ! apt-cache show --no-all-versions "$pkg" >/dev/null 2>&1; then
    log "$pkg" "SKIPPED: not in this Debian release"
    return 0
  fi
  local version
  version="$(apt-cache show --no-all-versions "$pkg" | awk '/^Version:/{print $2; exit}')"
  (cd "$DEBS" && apt-get download -qq "$pkg") || { log "$pkg" "FAILED: apt-get download"; return 0; }
  local deb
  deb="$(ls -t "$DEBS/${pkg}"_*.deb 2>/dev/null | head -n1)"
  rm -rf "$dest" && mkdir -p "$dest"
  if dpkg -x "$deb" "$dest"; then
    prune "$dest"
    echo "$version" >"$dest/.done"
    rm -f "$deb"
    log "$pkg" "ok $version $(du -sh "$dest" | cut -f1) $(find "$dest" -type f ! -name .done | wc -l) files"
  else
    log "$pkg" "FAILED: dpkg -x"
  fi
}

for pkg in "${AUDIO_PACKAGES[@]}" "${MIDI_PACKAGES[@]}"; do fetch "$pkg"; done

SF2=/usr/share/sounds/sf2/FluidR3_GM.sf2
[ -e "$SF2" ] || SF2=/usr/share/sounds/sf2/TimGM6mb.sf2
if ! command -v fluidsynth >/dev/null 2>&1 || [ ! -e "$SF2" ]; then
  log midi "SKIPPED: fluidsynth or a GM soundfont is missing"
  exit 0
fi

for pkg in "${MIDI_PACKAGES[@]}"; do
  src="$PKGS/$pkg"
  [ -d "$src" ] || continue
  n=0
  while IFS= read -r -d '' mid; do
    rel="${mid#"$src"/}"
    out="$RENDERED/$pkg/${rel%.*}.flac"
    [ -s "$out" ] && continue
    mkdir -p "$(dirname "$out")"
    # -g 0.5: louder than the 0.2 default without clipping typical GM files; fixed rate 44.1 kHz.
    if timeout 600 fluidsynth -ni -q -g 0.5 -r 44100 -T flac -F "$out.tmp.flac" "$SF2" "$mid" >/dev/null 2>&1 \
      && [ -s "$out.tmp.flac" ]; then
      mv "$out.tmp.flac" "$out"
      n=$((n + 1))
    else
      rm -f "$out.tmp.flac"
      echo "install-corpus: $pkg: could not render $rel" >&2
    fi
  done < <(find "$src" -type f \( -iname '*.mid' -o -iname '*.midi' \) -print0 | sort -z)
  log "$pkg" "rendered $n new MIDI files ($(find "$RENDERED/$pkg" -name '*.flac' 2>/dev/null | wc -l) total) with $(basename "$SF2")"
done
echo "install-corpus: done; $(du -sh "$CORPUS" | cut -f1) in $CORPUS"
