#!/usr/bin/env bash
# Runs python-etcd3's own tests of Maintenance and Auth (test_hash,
# test_snapshot, the four alarm tests, test_user_pwd_auth) against
# `roster serve`. python-etcd3 and its test tools come from Debian
# (python3-etcd3 python3-pytest python3-tenacity python3-hypothesis
# python3-mock); its test file is not packaged, so it is taken from the
# project's 0.12.0 source release, checked against a pinned sha256.
#
# Those tests, and the etcdctl calls inside them, talk to 127.0.0.1:2379,
# etcdctl's default, so the server listens there; the script refuses to run
# when something else already does. It stops only the server it started.
#
#   scripts/python-etcd3.sh [path/to/roster]
set -euo pipefail
cd "$(dirname "$0")/.."

ROSTER=${1:-target/debug/roster}
SDIST_SHA256=89a704cb389bf0a010a1fa050ce19342d23bf6371ebda1c21cfe8ff3ed488726
TESTS="test_hash or test_snapshot or TestAlarms or test_user_pwd_auth"
PY=/usr/bin/python3

[ -x "$ROSTER" ] || { echo "no roster binary at $ROSTER (cargo build -p roster-cli)" >&2; exit 1; }
$PY -c 'import etcd3, pytest, tenacity, hypothesis, mock' 2>/dev/null || {
    echo "python-etcd3 or its test tools are missing (Debian: apt-get install python3-etcd3 python3-pytest python3-tenacity python3-hypothesis python3-mock)" >&2
    exit 1
}
if (exec 3<>/dev/tcp/127.0.0.1/2379) 2>/dev/null; then
    echo "something already listens on 127.0.0.1:2379; python-etcd3's tests need that port" >&2
    exit 1
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/roster-python-etcd3.XXXXXX")
PID=""
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "== python-etcd3 0.12.0's tests (source release from PyPI, sha256 pinned)"
PIP=$(command -v pip || command -v pip3 || true)
[ -n "$PIP" ] || { echo "pip is needed to fetch python-etcd3's source release" >&2; exit 1; }
"$PIP" download --quiet --no-deps --no-binary :all: --dest "$WORK" etcd3==0.12.0
echo "$SDIST_SHA256  $WORK/etcd3-0.12.0.tar.gz" | sha256sum -c --quiet
tar -xzf "$WORK/etcd3-0.12.0.tar.gz" -C "$WORK" etcd3-0.12.0/tests
# Only the tests: the library is Debian's.
mv "$WORK/etcd3-0.12.0/tests" "$WORK/tests"

"$ROSTER" --log warn serve --in-memory --listen 127.0.0.1:2379 --no-http >"$WORK/roster.log" 2>&1 &
PID=$!
for _ in $(seq 1 100); do
    ETCDCTL_API=3 etcdctl --dial-timeout=1s endpoint health >/dev/null 2>&1 && break
    kill -0 "$PID" 2>/dev/null || { echo "roster serve exited:" >&2; cat "$WORK/roster.log" >&2; exit 1; }
    sleep 0.1
done

cd "$WORK"
# test_user_pwd_auth patches the top-level module `etcdrpc`, which the
# project's own tox setup puts on the path: the package's generated stubs.
STUBS=$($PY -c 'import etcd3, os; print(os.path.dirname(etcd3.__file__))')
PYTHONPATH="$STUBS" PYTHON_ETCD_HTTP_URL=http://127.0.0.1:2379 ETCDCTL_API=3 \
    $PY -m pytest -q -p no:cacheprovider tests/test_etcd3.py -k "$TESTS" -rA 2>&1 | tee "$WORK/pytest.log"
passed=$(grep -c '^PASSED' "$WORK/pytest.log" || true)
echo "== python-etcd3: $passed tests passed against roster serve"
[ "$passed" -ge 7 ] || { echo "expected at least 7 python-etcd3 tests to pass" >&2; exit 1; }
