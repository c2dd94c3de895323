#!/usr/bin/env bash
# bench/pki.sh DIR — a throw-away test CA and a server certificate for mail.contoso.test,
# localhost and 127.0.0.1, with openssl (ECDSA P-256, as a modern deployment would use).
# Writes DIR/ca.pem, DIR/ca.key, DIR/server.pem (certificate), DIR/server.key.
set -euo pipefail
dir="${1:?usage: bench/pki.sh DIR}"
mkdir -p "$dir"
cd "$dir"
openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
openssl req -x509 -new -key ca.key -sha256 -days 7 -subj "/CN=mfa-gateway bench CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out ca.pem 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out server.ec.key 2>/dev/null
# PKCS#8: every server here (nginx, Apache, rustls) reads it.
openssl pkcs8 -topk8 -nocrypt -in server.ec.key -out server.key
rm -f server.ec.key
openssl req -new -key server.key -subj "/CN=mail.contoso.test" -out server.csr 2>/dev/null
cat >server.ext <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:mail.contoso.test,DNS:localhost,IP:127.0.0.1
EXT
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 7 -sha256 \
    -extfile server.ext -out server.pem 2>/dev/null
rm -f server.csr server.ext ca.srl
chmod 600 ca.key server.key
echo "$dir"
