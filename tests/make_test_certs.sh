#!/usr/bin/env bash
# Makes the certificates the TLS tests use, with openssl, in DIR:
#   ca.pem             a test CA
#   server.pem/.key    signed by it, for 127.0.0.1, ::1 and localhost (and rlhf.test); server and client use
#                      (one certificate per process serves and dials under mutual TLS)
#   client.pem/.key    a client certificate signed by it (mutual TLS)
#   other-ca.pem       another CA, and other-client.pem/.key signed by that one (must be refused)
#   token              a bearer token (mode 600), wrong-token another one
set -euo pipefail
dir=${1:?usage: make_test_certs.sh DIR}
mkdir -p "$dir"
cd "$dir"
quiet() { "$@" >/dev/null 2>&1 || { echo "make_test_certs: failed: $*" >&2; "$@"; exit 1; }; }
ca() {  # name subject
  quiet openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=$2" -keyout "$1.key" -out "$1.pem"
}
leaf() {  # name ca subject extfile-lines
  quiet openssl req -newkey rsa:2048 -nodes -subj "/CN=$3" -keyout "$1.key" -out "$1.csr"
  printf '%b' "$4" > "$1.ext"
  quiet openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -days 2 -extfile "$1.ext" -out "$1.pem"
  rm -f "$1.csr" "$1.ext"
}
ca ca "rlhf test CA"
ca other-ca "another CA"
leaf server ca "rlhf server" "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost,DNS:rlhf.test\nextendedKeyUsage=serverAuth,clientAuth\n"
leaf client ca "rlhf client" "extendedKeyUsage=clientAuth\n"
leaf other-client other-ca "intruder" "extendedKeyUsage=clientAuth\n"
openssl rand -hex 32 > token
openssl rand -hex 32 > wrong-token
chmod 600 token wrong-token ./*.key
