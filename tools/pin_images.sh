#!/usr/bin/env bash
# make pin-images: pin each registry image of the given files by digest, in place.
# For every `image: NAME:TAG` (compose, Kubernetes) and `FROM NAME:TAG` (Dockerfile) not
# yet pinned, pull it and write NAME:TAG@sha256:... (the digest of the multi-platform index the
# tag points to today, as `docker image inspect` records it). Images built here (tfxops:*) are
# left alone. Needs a Docker engine that reaches the registry; run it again to move to newer
# digests after removing the @sha256:... parts. Review the diff before committing it.
set -euo pipefail
command -v docker >/dev/null || { echo "error: pin-images needs docker on PATH" >&2; exit 1; }

images=$(grep -hoE '^[[:space:]-]*(image:|FROM)[[:space:]]+[^[:space:]#]+' "$@" \
         | awk '{print $NF}' | grep -v '@sha256:' | grep -v '^tfxops:' | sort -u)
for image in $images; do
    docker pull --quiet "$image" >/dev/null
    digest=$(docker image inspect --format '{{index .RepoDigests 0}}' "$image")
    digest=${digest#*@}
    case $digest in sha256:*) ;; *) echo "error: no digest for $image" >&2; exit 1 ;; esac
    pattern=$(printf '%s' "$image" | sed 's/[.[\/*^$]/\\&/g')
    sed -i -E "s/((image:|FROM)[[:space:]]+)${pattern}([[:space:]]|\$)/\\1${pattern}@${digest}\\3/" "$@"
    echo "$image -> $image@$digest"
done
