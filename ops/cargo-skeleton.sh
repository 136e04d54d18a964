#!/usr/bin/env bash
# Used by the Dockerfile (planner stage): copies the workspace's manifests into DEST with stub sources for every
# target they declare or Cargo would discover, so that the image's dependency layer can be compiled from DEST alone.
#
#   ops/cargo-skeleton.sh SRC DEST
#
# DEST changes only when a Cargo.toml, Cargo.lock or the set of targets changes: editing sources keeps the
# dependency layer cached. Works for any workspace member, including ones added later (every Cargo.toml below SRC
# outside target/ is taken). Stubs: `fn main() {}` for binaries, benches, tests, examples and build scripts, an
# empty file for libraries. File times are fixed so that the layer cache depends on contents only.
set -euo pipefail
SRC="$(cd "$1" && pwd)"
DEST="$2"
mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd)"
cd "$SRC"

stub() { # stub lib|main PATH
  mkdir -p "$DEST/$(dirname "$2")"
  if [ "$1" = lib ]; then : >"$DEST/$2"; else echo 'fn main() {}' >"$DEST/$2"; fi
}

cp Cargo.toml Cargo.lock "$DEST/"
while IFS= read -r manifest; do
  dir="$(dirname "$manifest")"
  dir="${dir#./}"
  mkdir -p "$DEST/$dir"
  cp "$manifest" "$DEST/$dir/Cargo.toml"
  # Targets Cargo discovers by convention.
  [ ! -f "$dir/src/lib.rs" ] || stub lib "$dir/src/lib.rs"
  [ ! -f "$dir/src/main.rs" ] || stub main "$dir/src/main.rs"
  [ ! -f "$dir/build.rs" ] || stub main "$dir/build.rs"
  for file in "$dir"/src/bin/*.rs "$dir"/src/bin/*/main.rs; do
    [ ! -f "$file" ] || stub main "$file"
  done
  # Targets the manifest declares ([lib], [[bin]], [[bench]], [[test]], [[example]]): by path, or by name at the
  # conventional places.
  while read -r kind name path; do
    if [ "$path" != - ]; then
      [ ! -f "$dir/$path" ] || stub "$kind" "$dir/$path"
      continue
    fi
    [ "$name" != - ] || continue
    case "$kind" in
      bin) sub=src/bin ;;
      bench) sub=benches ;;
      test) sub=tests ;;
      example) sub=examples ;;
      *) continue ;;
    esac
    for file in "$dir/$sub/$name.rs" "$dir/$sub/$name/main.rs"; do
      [ ! -f "$file" ] || stub main "$file"
    done
  done < <(awk '
    function flush() {
      if (kind != "") print kind, (name == "" ? "-" : name), (path == "" ? "-" : path)
      kind = ""; name = ""; path = ""
    }
    function value(line) {
      sub(/^[^=]*=[[:space:]]*"/, "", line); sub(/".*$/, "", line); return line
    }
    /^[[:space:]]*\[/ {
      flush()
      if ($0 ~ /^[[:space:]]*\[lib\]/) kind = "lib"
      else if ($0 ~ /^[[:space:]]*\[\[(bin|bench|test|example)\]\]/) {
        kind = $0; sub(/^[[:space:]]*\[\[/, "", kind); sub(/\]\].*$/, "", kind)
      }
      next
    }
    kind != "" && /^[[:space:]]*name[[:space:]]*=/ { name = value($0) }
    kind != "" && /^[[:space:]]*path[[:space:]]*=/ { path = value($0) }
    END { flush() }
  ' "$manifest")
done < <(find . -name Cargo.toml -not -path '*/target/*' -not -path './.git/*' -not -path './vendor/*' | sort)

find "$DEST" -exec touch -h -d @0 {} +
