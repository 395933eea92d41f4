#!/bin/sh
# disclaimer.sh MESSAGE NEWBODY DISCLAIMERFILE
# Appends the disclaimer to plain-text, non-MIME messages by writing the new body to NEWBODY
# (milter-agent applies it with -B). Other messages are left alone (NEWBODY stays empty).
set -eu
msg=$1 newbody=$2 disclaimer=$3
head=$(sed -n '1,/^\r*$/p' "$msg" | tr -d '\r' | tr 'A-Z' 'a-z')
case $head in
  *"content-type: multipart"*|*"content-transfer-encoding: base64"*) exit 0 ;;
esac
sed '1,/^\r*$/d' "$msg" > "$newbody"
printf '\r\n-- \r\n' >> "$newbody"
sed 's/\r*$/\r/' "$disclaimer" >> "$newbody"
