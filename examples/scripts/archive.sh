#!/bin/sh
# archive.sh MESSAGE DIRECTORY
# Stores a copy of each message as DIRECTORY/YYYY-MM-DD/<time>.<random>.eml, atomically:
# written to a temporary name first, then renamed, so readers never see half a message.
set -eu
msg=$1 dir=$2/$(date +%Y-%m-%d)
mkdir -p "$dir"
tmp=$(mktemp "$dir/.incoming.XXXXXX")
cp "$msg" "$tmp"
mv "$tmp" "$dir/$(date +%H%M%S).$(basename "$tmp" | cut -d. -f3).eml"
