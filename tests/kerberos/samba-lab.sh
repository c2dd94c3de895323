#!/usr/bin/env bash
# Provisions a Samba Active Directory domain controller for the Kerberos tests into DIR, bound to
# the loopback address IP only (so test binaries running at once each have their own KDC), with
# the accounts of a Kerberos constrained delegation deployment:
#
#   alice, bob         users the gateway signs in to Exchange
#   carol              "Account is sensitive and cannot be delegated"
#   svc-mfagw          the gateway's service account: SPN HTTP/gw.corp.contoso.test, allowed to
#                      delegate to HTTP/mail.contoso.test with any authentication protocol
#   exchsvc            Exchange's account: SPNs HTTP/mail.contoso.test and
#                      HTTP/other.contoso.test (the second is not in the delegation list)
#
# and writes DIR/krb5.conf, DIR/gateway.keytab (svc-mfagw) and DIR/exchange.keytab (both HTTP
# SPNs of exchsvc). The daemon is not started here: the caller runs
#   samba -s DIR/etc/smb.conf -i -M single --debug-stdout
# so that it owns the process and stops it.
set -euo pipefail

DIR=${1:?usage: samba-lab.sh DIR IP}
IP=${2:?usage: samba-lab.sh DIR IP}
REALM=CORP.CONTOSO.TEST
DOMAIN=CORP
PASS='Adm1n-Pass.2024'

mkdir -p "$DIR"
cd "$DIR"

samba-tool domain provision --realm=$REALM --domain=$DOMAIN --server-role=dc \
  --dns-backend=NONE --adminpass="$PASS" --targetdir="$DIR" \
  --host-name=dc1 --host-ip="$IP" \
  --option="interfaces=$IP/8" --option="bind interfaces only=yes" \
  --option="server services=kdc" >"$DIR/provision.log" 2>&1

# Everything the daemon writes stays under DIR.
mkdir -p "$DIR/run" "$DIR/log"
sed -i -e '/^\s*log file = /d' -e '/^\s*logging = /d' "$DIR/etc/smb.conf"
sed -i "/^\[global\]/a\\
\tlog file = $DIR/log/samba.log\\
\tpid directory = $DIR/run\\
\tncalrpc dir = $DIR/run/ncalrpc\\
\twinbindd socket directory = $DIR/run/winbindd" "$DIR/etc/smb.conf"

tool() { samba-tool "$@" -s "$DIR/etc/smb.conf" >>"$DIR/accounts.log" 2>&1; }

tool user create alice 'Al1ce-Pass.2024'
tool user create bob 'B0b-Pass.2024.x'
tool user create carol 'Car0l-Pass.2024'
tool user sensitive carol on
tool user create svc-mfagw 'Gw-Svc-Pass.2024'
tool spn add HTTP/gw.corp.contoso.test svc-mfagw
tool user create exchsvc 'Exch-Svc-Pass.2024'
tool spn add HTTP/mail.contoso.test exchsvc
tool spn add HTTP/other.contoso.test exchsvc
tool delegation add-service svc-mfagw HTTP/mail.contoso.test
tool delegation for-any-protocol svc-mfagw on

# AES keys: without msDS-SupportedEncryptionTypes an export by SPN holds only RC4.
BASE=DC=corp,DC=contoso,DC=test
for account in svc-mfagw exchsvc; do
  ldbmodify -H "$DIR/private/sam.ldb" >>"$DIR/accounts.log" 2>&1 <<EOF
dn: CN=$account,CN=Users,$BASE
changetype: modify
replace: msDS-SupportedEncryptionTypes
msDS-SupportedEncryptionTypes: 24
EOF
done

tool domain exportkeytab "$DIR/gateway.keytab" --principal=svc-mfagw
tool domain exportkeytab "$DIR/exchange.keytab" --principal=HTTP/mail.contoso.test
tool domain exportkeytab "$DIR/exchange.keytab" --principal=HTTP/other.contoso.test

cat >"$DIR/krb5.conf" <<EOF
[libdefaults]
  default_realm = $REALM
  dns_lookup_kdc = false
  dns_lookup_realm = false
  rdns = false
  dns_canonicalize_hostname = false
  forwardable = true
  udp_preference_limit = 1
[realms]
  $REALM = {
    kdc = $IP:88
  }
[domain_realm]
  .contoso.test = $REALM
  contoso.test = $REALM
EOF
echo ready
