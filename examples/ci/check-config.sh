#!/bin/sh
# The config check of a config repository that holds one xlb.toml per host or group:
#   hosts/NAME.toml      the config that will be applied (by `xlb apply` or a reload)
#   exported/NAME.toml   optional: `xlb export` of what runs there now
# Each file must validate (`--strict`: limits looser than the defaults are findings too);
# where an export exists, the change from it must pass the guardrails, which also catches
# a change too big for one step (max-flow-shift) that validate alone cannot see.
# Needs only an `xlb` on PATH: a build without the XDP program (stable Rust) is enough.
# Exit 0 when every file passes, 1 otherwise; every file is checked either way.
set -u

dir=${1:-.}
status=0
found=0
for file in "$dir"/hosts/*.toml; do
    [ -e "$file" ] || continue
    found=1
    name=$(basename "$file")
    echo "== $name"
    if ! xlb validate --strict "$file"; then
        status=1
        continue
    fi
    exported="$dir/exported/$name"
    if [ -f "$exported" ]; then
        if ! xlb diff "$file" --against "$exported"; then
            status=1
        fi
    fi
done
if [ "$found" = 0 ]; then
    echo "no $dir/hosts/*.toml to check" >&2
    exit 1
fi
exit $status
