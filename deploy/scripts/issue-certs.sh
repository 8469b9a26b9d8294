#!/bin/sh
# Issues the certificates of a federation: the CA and coordinator certificate (once), one
# bundle per site, one admin bundle. With --k8s, also writes Kubernetes Secret manifests.
#
#   issue-certs.sh [--k8s] PKI_DIR COORDINATOR_HOST[,MORE_HOSTS] SITE...
#
# e.g. issue-certs.sh pki coordinator,localhost emidec mscmr vh   (the compose setup)
set -eu
k8s=no
if [ "${1:-}" = "--k8s" ]; then k8s=yes; shift; fi
if [ $# -lt 3 ]; then
    echo "usage: $0 [--k8s] PKI_DIR COORDINATOR_HOST[,MORE_HOSTS] SITE..." >&2
    exit 2
fi
pki=$1 hosts=$2
shift 2
coordinator=${COORDINATOR:-coordinator}
host=${hosts%%,*}
endpoint="https://$host:7443"

if [ ! -f "$pki/ca.crt" ]; then
    "$coordinator" pki init --dir "$pki" --hosts "$hosts"
fi
for site in "$@"; do
    [ -f "$pki/sites/$site/$site.crt" ] || "$coordinator" pki issue-site "$site" --dir "$pki" --endpoint "$endpoint"
done
[ -f "$pki/admins/ops/ops.crt" ] || "$coordinator" pki issue-admin ops --dir "$pki" --endpoint "$endpoint"

if [ "$k8s" = yes ]; then
    secret() { # NAME FILE_KEY=PATH...
        name=$1; shift
        printf 'apiVersion: v1\nkind: Secret\nmetadata:\n  name: %s\ntype: Opaque\ndata:\n' "$name"
        for kv in "$@"; do
            printf '  %s: %s\n' "${kv%%=*}" "$(base64 < "${kv#*=}" | tr -d '\n')"
        done
    }
    {
        # The coordinator gets its own certificate and the CA certificate, never the CA key.
        secret fedseg-coordinator-pki ca.crt="$pki/ca.crt" coordinator.crt="$pki/coordinator.crt" coordinator.key="$pki/coordinator.key"
        for site in "$@"; do
            printf -- '---\n'
            secret "fedseg-site-$site" ca.crt="$pki/sites/$site/ca.crt" "$site.crt=$pki/sites/$site/$site.crt" "$site.key=$pki/sites/$site/$site.key"
        done
    } > "$pki/k8s-secrets.yaml"
    chmod 600 "$pki/k8s-secrets.yaml"
    echo "Kubernetes secrets: $pki/k8s-secrets.yaml (kubectl apply -f, then delete the file)"
fi
