#!/usr/bin/env bash
# Installs the pgvector extension into the machine's PostgreSQL (the `--index pgvector` backend
# and its tests need it), when it is not installed yet:
#
#   bash scripts/install_pgvector.sh
#
# Debian bookworm has no pgvector package; trixie's source package (0.8.0) builds against
# PostgreSQL 15 with PGXS. The source comes through a private apt configuration (its own
# sources list, lists and cache under $NOTELLM_CACHE/pgvector-apt): /etc/apt is never edited.
# Needs root (apt-get install of the server headers, make install). About 15 s.
set -euo pipefail
PG_CONFIG="${PG_CONFIG:-$(ls -d /usr/lib/postgresql/*/bin/pg_config 2>/dev/null | sort -V | tail -1)}"
[ -x "$PG_CONFIG" ] || { echo "install_pgvector: no pg_config under /usr/lib/postgresql" >&2; exit 1; }
if [ -f "$("$PG_CONFIG" --sharedir)/extension/vector.control" ]; then
  echo "pgvector is installed ($("$PG_CONFIG" --sharedir)/extension/vector.control)"
  exit 0
fi
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
major="$("$PG_CONFIG" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')"
cache="${NOTELLM_CACHE:-$HOME/.cache/notellm}/pgvector-apt"
mkdir -p "$cache/lists/partial" "$cache/archives/partial" "$cache/src"
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  "postgresql-server-dev-$major" dpkg-dev make gcc >/dev/null
# The machine's own Debian mirror, with trixie's sources.
uri="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
uri="${uri:-$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)}"
[ -n "$uri" ] || { echo "install_pgvector: cannot find the machine's Debian mirror" >&2; exit 1; }
echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri trixie main" > "$cache/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$cache/sources.list" -o Dir::Etc::SourceParts=/dev/null
  -o "Dir::State::Lists=$cache/lists" -o "Dir::Cache=$cache")
apt-get "${apt_opts[@]}" update -qq >/dev/null
rm -rf "$cache/src" && mkdir -p "$cache/src"
chmod 777 "$cache/src"   # apt-get source may drop to the _apt user for the download
(cd "$cache/src" && apt-get "${apt_opts[@]}" source -qq pgvector >/dev/null 2>&1)
src="$(ls -d "$cache"/src/pgvector-*/ | head -1)"
make -s -C "$src" PG_CONFIG="$PG_CONFIG" >/dev/null
as_root make -s -C "$src" PG_CONFIG="$PG_CONFIG" install >/dev/null
echo "pgvector installed from $(basename "$src") for PostgreSQL $major"
