#!/bin/sh
# Roll out WardKey with plain kubectl: the migration Job first, then the rest.
#
#   deploy/kubernetes/rollout.sh deploy/kubernetes/overlays/production
#
# 1. delete the last release's migration Job (a Job's pod template cannot be changed),
# 2. apply only the Job (the objects labelled app.kubernetes.io/component=migrate) and wait for
#    it to complete: if the migration fails, nothing else has changed and the old pods run on,
# 3. apply everything (the Job again is unchanged), and wait for both Deployments.
set -eu
overlay=${1:?usage: rollout.sh OVERLAY_DIR}
namespace=$(kubectl kustomize "$overlay" | sed -n 's/^  namespace: //p' | head -n 1)
: "${namespace:?the overlay sets no namespace}"
timeout=${WARDKEY_MIGRATE_TIMEOUT:-15m}

kubectl -n "$namespace" delete job wardkey-migrate --ignore-not-found --wait=true
kubectl apply -k "$overlay" -l app.kubernetes.io/component=migrate
if ! kubectl -n "$namespace" wait --for=condition=complete --timeout="$timeout" job/wardkey-migrate; then
  echo "rollout: the migration did not complete; nothing else was changed. Its log:" >&2
  kubectl -n "$namespace" logs job/wardkey-migrate --tail=50 >&2 || true
  exit 1
fi
kubectl apply -k "$overlay"
kubectl -n "$namespace" rollout status deployment/wardkey-web --timeout=10m
kubectl -n "$namespace" rollout status deployment/wardkey-worker --timeout=10m
