#!/usr/bin/env bash
# Debian packages the tool uses: ffmpeg (codecs for decode/sweep) and libsndfile (soundfile); fluidsynth
# and the small TimGM6mb soundfont (6 MB) so the corpus render tests run (make corpus adds the others).
set -euo pipefail
need=()
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
ldconfig -p 2>/dev/null | grep -q libsndfile || need+=(libsndfile1)
command -v fluidsynth >/dev/null 2>&1 || need+=(fluidsynth)
[ -e /usr/share/sounds/sf2/TimGM6mb.sf2 ] || need+=(timgm6mb-soundfont)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi
if command -v apt-get >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
  echo "install-system-deps: please install: ${need[*]} (no apt-get here)" >&2
fi
