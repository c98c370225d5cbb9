#!/bin/sh
# Fake merge_config.sh: -m -O DIR BASE FRAGMENT...; later fragments win, like the real one.
[ "$1" = "-m" ] && shift
[ "$1" = "-O" ] && { out=$2; shift 2; }
base=$1; shift
for frag in "$@"; do
  for opt in $(sed -n 's/^\(CONFIG_[A-Za-z0-9_]*\)=.*/\1/p; s/^# \(CONFIG_[A-Za-z0-9_]*\) is not set/\1/p' "$frag"); do
    grep -v -e "^$opt=" -e "^# $opt is not set" "$base" > "$base.tmp" || true
    mv "$base.tmp" "$base"
  done
  cat "$frag" >> "$base"
done
