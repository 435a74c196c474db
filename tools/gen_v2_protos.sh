#!/usr/bin/env bash
# make protos: regenerate serving/v2/grpc_predict_v2_pb2.py and _pb2_grpc.py from the
# vendored third_party/kserve/grpc_predict_v2.proto, with the protoc of
# tools/protos-requirements.txt, installed in .cache/tools-venv-protos (created here, once
# per pin change). The generated files are committed: the server imports them.
# PYTHON: a Python 3.10 interpreter for that virtualenv (default: python3.10 on PATH);
# OUT: where to write serving/v2/... (default: the repository, in place).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.cache/tools-venv-protos
pins=tools/protos-requirements.txt
python=${PYTHON:-python3.10}
out=${OUT:-.}
mkdir -p "$out/serving/v2"
if ! cmp -s "$pins" "$venv/.installed" 2>/dev/null; then
    "$python" -m venv --clear "$venv"
    "$venv/bin/pip" install --disable-pip-version-check --no-input -q --only-binary=:all: -r "$pins"
    cp "$pins" "$venv/.installed"
fi
# -Iserving/v2=...: the generated _pb2_grpc imports its _pb2 as serving.v2.grpc_predict_v2_pb2
"$venv/bin/python" -m grpc_tools.protoc -Iserving/v2=third_party/kserve \
    --python_out="$out" --grpc_python_out="$out" serving/v2/grpc_predict_v2.proto
echo "generated $out/serving/v2/grpc_predict_v2_pb2.py and _pb2_grpc.py with $("$venv/bin/python" -m grpc_tools.protoc --version)"
