#!/usr/bin/env bash
# Build the cluster image in both variants from the repository root:
#   infra/build-images.sh            # both
#   infra/build-images.sh cpu        # only  ${IMAGE_REPO}:${IMAGE_VERSION}-cpu
#   PUSH=1 infra/build-images.sh     # and push them
set -euo pipefail
cd "$(dirname "$0")/.."
source infra/images.env
variants=("${@:-cuda cpu}")
for variant in ${variants[@]}; do
  case "$variant" in
    cuda) base="$CUDA_BASE"; index="$CUDA_TORCH_INDEX" ;;
    cpu)  base="$CPU_BASE";  index="$CPU_TORCH_INDEX" ;;
    *) echo "unknown variant $variant (cuda|cpu)" >&2; exit 2 ;;
  esac
  tag="${IMAGE_REPO}:${IMAGE_VERSION}-${variant}"
  docker build -f infra/Dockerfile --build-arg BASE_IMAGE="$base" --build-arg TORCH_INDEX_URL="$index" -t "$tag" .
  if [[ "${PUSH:-0}" == 1 ]]; then docker push "$tag"; fi
done
