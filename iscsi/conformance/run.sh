#!/usr/bin/env bash
# run.sh - blockyard's iSCSI conformance run: libiscsi's iscsi-test-cu against our target.
#
#   iscsi/conformance/run.sh [-t SECS] [-k]
#
# Starts `python -m blockyard.transport.iscsi_target` on 127.0.0.1 (a free port) with three
# sparse scratch LUNs (see run-list.txt), runs every line of run-list.txt through
# /work/shared/tools/iscsi_conformance.sh (override with $ISCSI_CONFORMANCE), merges the
# results with merge.py against skip-list.txt and stops the server (by its PID).
#   -t SECS   time bound per run (default 600)
#   -k        keep the work directory (raw outputs, server log) and print its path
# Last line: "N passed, M failed, K skipped".  Exit 0 = no failures and every skip listed.
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
py=${PYTHON:-$root/.venv/bin/python}
tool=${ISCSI_CONFORMANCE:-/work/shared/tools/iscsi_conformance.sh}
bound=600
keep=0
while getopts "t:k" opt; do
	case "$opt" in
	t) bound=$OPTARG ;;
	k) keep=1 ;;
	*) sed -n '2,14p' "$0"; exit 2 ;;
	esac
done

work=$(mktemp -d "${TMPDIR:-/tmp}/blockyard-conformance.XXXXXX")
truncate -s 256M "$work/scratch.img"
truncate -s 64M "$work/readonly.img" "$work/removable.img"
port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" "$py" -m blockyard.transport.iscsi_target \
	"$work/scratch.img,thin" "$work/readonly.img,ro" "$work/removable.img,removable,thin" \
	--listen "127.0.0.1:$port" --nop-interval 0 >"$work/server.log" 2>&1 &
pid=$!
cleanup() {
	kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	if [ "$keep" -eq 1 ]; then echo "work directory: $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

for _ in $(seq 100); do
	"$py" -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2).close()" \
		2>/dev/null && break
	sleep 0.1
done

outputs=()
while read -r name target spec flags; do
	case "$name" in ''|'#'*) continue ;; esac
	# shellcheck disable=SC2086
	"$tool" -q -t "$bound" -T "$spec" $flags -i iqn.2026-11.org.blockyard:conformance-1 \
		-I iqn.2026-11.org.blockyard:conformance-2 -o "$work/$name.txt" \
		"127.0.0.1:$port" "iqn.2026-11.org.blockyard:$target" 0 >"$work/$name.summary" 2>&1
	echo "run $name ($target, $spec): $(tail -1 "$work/$name.summary")" >&2
	outputs+=("$work/$name.txt")
done <"$here/run-list.txt"

"$py" "$here/merge.py" --skip-list "$here/skip-list.txt" "${outputs[@]}"
