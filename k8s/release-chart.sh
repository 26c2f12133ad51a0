#!/usr/bin/env bash
# The chart as a release publishes it (.github/workflows/release.yml):
#   k8s/release-chart.sh <version> <owner> <directory>
# copies charts/regatta into <directory>/regatta with version and appVersion set to <version>
# (so every image tag defaults to it) and every Regatta image repository moved to
# ghcr.io/<owner>/, then packages it into <directory>/regatta-<version>.tgz with helm
# (PACKAGE=0 stops before that: the offline tests render the directory instead).
set -euo pipefail
(($# == 3)) || { echo "usage: $0 <version> <owner> <directory>" >&2; exit 2; }
version=$1
owner=${2,,}   # registry paths are lower case
destination=$3
[[ "${version}" =~ ^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$ ]] || {
    echo "release-chart.sh: ${version} is not a semantic version" >&2
    exit 2
}
[[ "${owner}" =~ ^[a-z0-9][a-z0-9-]*$ ]] || { echo "release-chart.sh: bad owner ${owner}" >&2; exit 2; }
cd "$(dirname "$0")/.."

chart="${destination}/regatta"
rm -rf "${chart}"
mkdir -p "${destination}"
cp -R charts/regatta "${chart}"
sed -i -e "s/^version: .*/version: ${version}/" -e "s/^appVersion: .*/appVersion: \"${version}\"/" \
    "${chart}/Chart.yaml"
sed -i "s|repository: ghcr.io/regatta/regatta-|repository: ghcr.io/${owner}/regatta-|" \
    "${chart}/values.yaml"
moved=$(grep -c "repository: ghcr.io/${owner}/regatta-" "${chart}/values.yaml" || true)
if [[ "${moved}" != 4 ]]; then
    echo "release-chart.sh: expected 4 image repositories in values.yaml, moved ${moved}" >&2
    exit 1
fi
if [[ "${PACKAGE:-1}" == 1 ]]; then
    helm package "${chart}" --destination "${destination}"
fi
