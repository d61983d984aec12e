#!/usr/bin/env bash
# Prints an HTTPRoute that splits reviews traffic by weight: reviews-route.sh V1_WEIGHT V2_WEIGHT
set -euo pipefail
cat <<YAML
apiVersion: weft.dev/v1
kind: HTTPRoute
metadata:
  name: reviews
spec:
  parentRefs:
    - name: reviews
  rules:
    - backendRefs:
        - {name: reviews, subset: v1, weight: ${1:?v1 weight}}
        - {name: reviews, subset: v2, weight: ${2:?v2 weight}}
YAML
