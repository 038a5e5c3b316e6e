#!/bin/sh
# Write .env from .env.example, with a random value for every secret left empty.
#
#   sh infra/init-env.sh [EXAMPLE] [TARGET]     (defaults: .env.example .env)
#
# `make up` runs it when .env is missing. It never overwrites an existing TARGET: edit
# that one by hand. Secrets are 32 hexadecimal characters from /dev/urandom (safe in
# connection URLs); TARGET is created readable by its owner only.
set -eu

example="${1:-.env.example}"
target="${2:-.env}"

if [ ! -f "$example" ]; then
    echo "init-env: $example not found: run this from the repository root" >&2
    exit 1
fi
if [ -e "$target" ]; then
    echo "init-env: $target exists; not overwritten (edit it, or remove it to start over)" >&2
    exit 1
fi

secret() {
    od -An -N16 -tx1 /dev/urandom | tr -d ' \n'
}

umask 077
tmp="$target.tmp.$$"
trap 'rm -f "$tmp"' EXIT
generated=""
while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in
        COMPOSE_PROFILES=) printf '%s\n' "$line" ;;
        [A-Z]*[A-Z0-9_]=)
            printf '%s%s\n' "$line" "$(secret)"
            generated="$generated ${line%=}"
            ;;
        *) printf '%s\n' "$line" ;;
    esac
done <"$example" >"$tmp"
mv "$tmp" "$target"
trap - EXIT
echo "init-env: wrote $target with new secrets for:$generated"
