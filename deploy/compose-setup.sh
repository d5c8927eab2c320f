#!/bin/sh
# Makes every file deploy/compose.yaml mounts, with the documented `nrm` commands only:
# administrators (2 of 3), the bus's operator, three agencies (police, shelter,
# coordinator) with their keys admitted to a signed directory, the ledger with its own keys,
# and each service's configuration written by `nrm agent config` / `nrm ledger config`.
#
#   deploy/compose-setup.sh DIR        then: NRM_DIR=DIR podman-compose -f deploy/compose.yaml up
#
# DIR must not exist. Every passphrase is a new random file (0600) in DIR; paths inside the
# configurations are the containers' (/etc/nrm/...). NRM=/path/to/nrm picks the nrm to run.
set -eu
dir=${1:?usage: compose-setup.sh DIR}
nrm=${NRM:-nrm}
umask 077
mkdir "$dir"
secret() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n' > "$1"; }

# Administrators: root keys, root.1.json, the operator's keys, the directory draft. The
# operator's key has its own passphrase: the bus (the operator's own single node) and the
# publication read it, and must never hold the administrators' (admin.passphrase stays
# here, mounted into no container). The ledger never gets the operator's key.
secret "$dir/admin.passphrase"
secret "$dir/operator.passphrase"
"$nrm" admin init --admins 3 --threshold 2 --dir "$dir/admin" --passphrase-file "$dir/admin.passphrase" \
  --operator-passphrase-file "$dir/operator.passphrase"
export NRM_ADMIN_DIR="$dir/admin"

# The agencies, each with its own key passphrase; the administrators admit them.
for spec in police:police:"Metropolitan Police anti-trafficking unit" \
            shelter:ngo:"Safe House NGO shelter" \
            coordinator:coordinator:"National Referral Mechanism co-ordinator"; do
  agency=${spec%%:*}; rest=${spec#*:}; role=${rest%%:*}; name=${rest#*:}
  mkdir "$dir/$agency"
  secret "$dir/$agency/passphrase"
  "$nrm" keys init --agency "$agency" --dir "$dir/$agency/keys" --name "$name" \
    --passphrase-file "$dir/$agency/passphrase"
  "$nrm" directory add-agency "$dir/$agency/keys/identity.json" --roles "$role"
  cp "$dir/admin/root.1.json" "$dir/$agency/root.json"     # handed over by the administrators
done
"$nrm" directory sign --key "$dir/admin/admin-1.key" --passphrase-file "$dir/admin.passphrase"
"$nrm" directory sign --key "$dir/admin/admin-2.key" --passphrase-file "$dir/admin.passphrase"

# Inside the compose network the APIs speak plain HTTP (--allow-plain-http: their ports are
# published on 127.0.0.1 only, and agents reach the ledger over the private network);
# beyond one host, give them certificates (--http-tls-cert/--http-tls-key, --ledger-ca).
#
# The ledger: its own keys and passphrase (it signs checkpoints with them and logs in to the
# bus with their NATS key, which the bus admits to the audit stream and the directory only:
# `nrm bus up --ledger-identity`), a token for each agency that reads only its own events
# (scope agency:<id>), and one for the auditors that reads everything.
mkdir "$dir/ledger"
secret "$dir/ledger/passphrase"
"$nrm" keys init --agency ledger --dir "$dir/ledger/keys" --name "Audit ledger" \
  --passphrase-file "$dir/ledger/passphrase"
"$nrm" ledger config --out "$dir/ledger/ledger.toml" --name national \
  --key-dir /etc/nrm/ledger/keys \
  --passphrase-file /etc/nrm/ledger/passphrase --nats nats://bus:4222 \
  --trust-root /etc/nrm/ledger/root.json --database /var/lib/nrm/ledger.db \
  --bind 0.0.0.0:8090 --allow-plain-http --auditor auditor \
  --agency-token police --agency-token shelter --agency-token coordinator
cp "$dir/admin/root.1.json" "$dir/ledger/root.json"

port=8081
for agency in police shelter coordinator; do
  cp "$dir/ledger/$agency.token" "$dir/$agency/ledger.token"
  cp "$dir/ledger/keys/identity.json" "$dir/$agency/ledger-identity.json"
  "$nrm" agent config --out "$dir/$agency/agent.toml" --agency "$agency" \
    --key-dir /etc/nrm/agent/keys --passphrase-file /etc/nrm/agent/passphrase \
    --nats nats://bus:4222 --database /var/lib/nrm/agent.db --trust-cache /var/lib/nrm/trust \
    --api-bind "0.0.0.0:$port" --client case-management:submit,read,act \
    --ledger-url http://ledger:8090 --ledger-name national \
    --ledger-identity ledger-identity.json --ledger-token-file ledger.token --allow-plain-http
  port=$((port + 1))
done
echo "ready: NRM_DIR=$dir podman-compose -f deploy/compose.yaml up"
